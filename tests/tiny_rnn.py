"""A step module that is not an Infini-Transformer (an Elman RNN): the protocol's general case, and the cheapest
module to export where a test is about the pipeline rather than the model (a few seconds, not tens)."""
import torch
from torch import nn

from infini_export.state import StateTensorSpec, StepSpec

VOCAB, DIM, SEG = 32, 16, 4


class TinyRNN(nn.Module):
    """Not an Infini-Transformer: an Elman RNN with a slow average of its hidden state.

    ``h_t = tanh(W e_t + U h_{t-1})``, ``ema_t = d * ema_{t-1} + (1 - d) * h_t``, logits from ``h_t + ema_t``.
    State ``(h, (ema,))`` (nested on purpose), both (B, DIM) float32; ``h`` starts from a learned, non-zero
    ``h0`` (so the artifact ships an initial state file), ``ema`` from zeros.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.w = nn.Linear(DIM, DIM)
        self.u = nn.Linear(DIM, DIM, bias=False)
        self.head = nn.Linear(DIM, VOCAB)
        self.h0 = nn.Parameter(0.1 * torch.randn(DIM))
        self.register_buffer("decay", torch.tensor(0.9))  # read, never written

    def step_spec(self) -> StepSpec:
        return StepSpec(VOCAB, SEG, (StateTensorSpec("h", ("batch", DIM)), StateTensorSpec("ema", ("batch", DIM))),
                        extra={"model": "TinyRNN (tests/tiny_rnn.py)"})

    def init_state(self, batch_size: int):
        h = self.h0.detach().expand(batch_size, DIM).clone()
        return (h, (torch.zeros(batch_size, DIM),))

    def step(self, input_ids, state):
        h, (ema,) = state
        x = self.w(self.emb(input_ids))  # (B, T, DIM)
        outs = []
        for t in range(input_ids.shape[1]):  # unrolled: segment_len is static
            h = torch.tanh(x[:, t] + self.u(h))
            ema = self.decay * ema + (1.0 - self.decay) * h
            outs.append(h + ema)
        return self.head(torch.stack(outs, dim=1)), (h, (ema,))
