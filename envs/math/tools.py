"""A safe calculator tool: arithmetic over an AST, never eval."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

MAX_ABS_VALUE = 10**30
MAX_EXPONENT = 100
MAX_EXPRESSION_CHARS = 500

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = {"×": "*", "÷": "/", "−": "-"}


class ToolError(ValueError):
    """A tool call failed; the message is shown to the model."""


def _eval(node: ast.AST) -> Fraction | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("'^' is not a power; use **")
    if isinstance(node, ast.Name):
        raise ToolError(f"unsupported syntax: name {node.id!r} (numbers only)")
    if isinstance(node, ast.Call):
        raise ToolError("unsupported syntax: function calls are not allowed")
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def _power(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (limit {MAX_EXPONENT})")
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        if base == 0 and exponent < 0:
            raise ToolError("division by zero")
        if abs(base) > 1 and abs(exponent) * _log10(abs(base)) > 31:
            raise ToolError("result too large")
        return base ** int(exponent)
    if base < 0:
        raise ToolError("fractional power of a negative number")
    return float(base) ** float(exponent)


def _log10(x) -> float:
    import math

    return math.log10(float(x))


def format_number(value) -> str:
    """Integers without '.0'; other values as decimals with 6 significant digits."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return str(value.numerator)
    if float(value).is_integer():
        return str(int(value))
    return format(float(value), ".6g")


def calculate(expr: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses) and return the result text."""
    expr = expr.strip()
    for symbol, op in _SYMBOLS.items():
        expr = expr.replace(symbol, op)
    if not expr:
        raise ToolError("empty expression")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (limit {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):  # ValueError: lone surrogates, NUL bytes
        raise ToolError(f"syntax error in {expr!r}") from None
    try:
        value = _eval(tree.body)
    except (OverflowError, RecursionError):
        raise ToolError("result too large") from None
    if abs(value) > MAX_ABS_VALUE:
        raise ToolError("result too large")
    return format_number(value)
