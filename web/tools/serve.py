"""A static file server for the demo page, on 127.0.0.1 only, cross-origin isolated.

The COOP/COEP headers make the page cross-origin isolated, which lets onnxruntime-web run its WebAssembly
kernels on several threads (SharedArrayBuffer) and the page measure its memory
(performance.measureUserAgentSpecificMemory).

    python web/tools/serve.py [--port 8000] [--directory .]
"""
from __future__ import annotations

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class IsolatedHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--directory", default=".")
    args = ap.parse_args()
    handler = functools.partial(IsolatedHandler, directory=args.directory)
    with ThreadingHTTPServer(("127.0.0.1", args.port), handler) as httpd:
        print(f"demo: http://127.0.0.1:{args.port}/web/demo/  (serving {args.directory} on 127.0.0.1 only)", flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
