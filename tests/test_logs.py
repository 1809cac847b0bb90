"""One log channel (training/logs.py): eprl's records print as bare lines, info to stdout and warnings to
stderr; under torchrun ranks other than 0 print warnings only."""

from __future__ import annotations

import logging

import pytest

from eprl.training.logs import ConsoleHandler, configure_logging


@pytest.fixture()
def eprl_logger():
    logger = logging.getLogger("eprl")
    saved = (list(logger.handlers), logger.level)
    yield logger
    logger.handlers[:], logger.level = saved[0], saved[1]


def test_lines_go_to_stdout_and_warnings_to_stderr_once(eprl_logger, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    configure_logging()
    configure_logging()  # the CLI may run twice in one process: still one handler
    assert sum(isinstance(h, ConsoleHandler) for h in eprl_logger.handlers) == 1
    logging.getLogger("eprl.training.loop").info("[iter   0] reward 0.500")
    logging.getLogger("eprl.rollout").warning("env step failed")
    logging.getLogger("other").info("not ours")
    out, err = capsys.readouterr()
    assert (out, err) == ("[iter   0] reward 0.500\n", "env step failed\n")


def test_other_ranks_print_warnings_only(eprl_logger, capsys, monkeypatch):
    configure_logging()
    monkeypatch.setenv("RANK", "1")  # torchrun's rank, before the process group exists
    logging.getLogger("eprl.training.loop").info("resumed run")
    logging.getLogger("eprl.training.loop").warning("no GPU")
    assert capsys.readouterr() == ("", "no GPU\n")
    monkeypatch.setenv("RANK", "0")
    logging.getLogger("eprl.training.loop").info("resumed run")
    assert capsys.readouterr() == ("resumed run\n", "")
