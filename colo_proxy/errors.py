"""Errors that the CLI turns into one clear line (never a traceback)."""

from __future__ import annotations


class ColoError(Exception):
    """An expected failure with a message meant for the operator."""

    exit_code = 1


class InputError(ColoError):
    """Bad input from the operator: arguments, files, captures.  Exit code 2."""

    exit_code = 2
