"""A tokenizer wrapper for random-weight models in benchmarks and tests."""


class NoEos:
    """The tokenizer with an EOS id no token has: a random model decodes exactly max_new_tokens."""

    eos_token_id = -1

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self):  # dunder methods bypass __getattr__
        return len(self._tokenizer)
