#!/usr/bin/env python3
"""sqflint (PyPI 0.3.2), taught the SQF commands that are newer than it, and
strict: exits 1 if any file has a parse or analysis error.

sqflint's command database predates HashMaps (2.02), `isNotEqualTo` (2.00)
and JSON (2.18). Unknown commands parse as variables, so each use of one is
an error; registering their signatures before sqflint builds its keyword
tables makes it parse and check them like the others. sqflint's own CLI
exits 0 even when it reports errors; this one does not.

Usage: sqflint_icom.py [--strict-warnings] LABEL=FILE ...
  FILE is the (preprocessed) SQF to check, LABEL the name to report it by.
"""
import sys

import sqf.database as database
from sqf.expressions import BinaryExpression, NullExpression, UnaryExpression
from sqf.types import Anything, Array, Boolean, Code, Keyword, Nothing, Number, String, Type

# Signatures of the commands sqflint does not know. `Type` (any value) where
# a HashMap goes, since sqflint has no HashMap type; `Anything` as a result.
NEWER_COMMANDS = [
    # HashMaps (2.02)
    NullExpression(Keyword('createhashmap'), Anything),
    UnaryExpression(Keyword('createhashmapfromarray'), Array, Anything),
    BinaryExpression(Type, Keyword('get'), Type, Anything),
    BinaryExpression(Type, Keyword('getordefault'), Array, Anything),
    BinaryExpression(Type, Keyword('set'), Array, Nothing),
    BinaryExpression(Type, Keyword('deleteat'), Type, Anything),
    BinaryExpression(Type, Keyword('in'), Type, Boolean),
    BinaryExpression(Type, Keyword('insert'), Array, Nothing),
    BinaryExpression(Type, Keyword('merge'), Type, Nothing),
    UnaryExpression(Keyword('keys'), Type, Array),
    UnaryExpression(Keyword('values'), Type, Array),
    UnaryExpression(Keyword('count'), Type, Number),
    # 2.00 - 2.18
    BinaryExpression(Type, Keyword('isnotequalto'), Type, Boolean),
    BinaryExpression(Array, Keyword('#'), Number, Anything),
    UnaryExpression(Keyword('compilescript'), Array, Code),
    UnaryExpression(Keyword('fromjson'), String, Anything),
    UnaryExpression(Keyword('tojson'), Type, String),
]

database.EXPRESSIONS.extend(NEWER_COMMANDS)

# Only now: these modules build their keyword tables from the database.
from sqf.exceptions import SQFParserError, SQFWarning  # noqa: E402
from sqf.parser import parse  # noqa: E402
import sqf.analyzer  # noqa: E402


def lint(label, path, strict_warnings):
    with open(path, encoding='utf-8') as f:
        code = f.read()
    lines = code.split('\n')
    try:
        found = sqf.analyzer.analyze(parse(code)).exceptions
    except SQFParserError as e:
        found = [e]
    failures = 0
    for e in found:
        line, column = e.position
        is_error = isinstance(e, SQFParserError)
        fails = is_error or (strict_warnings and isinstance(e, SQFWarning))
        failures += int(fails)
        source = lines[line - 1].strip() if 0 < line <= len(lines) else ''
        kind = 'error' if fails else 'note'
        print('%s:%d:%d: %s: %s\n    %s' % (label, line, column, kind, e.message, source))
    return failures


def main(args):
    strict = '--strict-warnings' in args
    pairs = [a.split('=', 1) for a in args if a != '--strict-warnings']
    if not pairs:
        print(__doc__)
        return 2
    failures = sum(lint(label, path, strict) for label, path in pairs)
    print('sqflint: %d file(s), %d failure(s)' % (len(pairs), failures))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
