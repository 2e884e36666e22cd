import pytest

from kubedistill.runtime.demo.tiny import build_tokenizer

from .builders import CORPUS


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=512)
