#!/usr/bin/env python3
"""Runs one shard of an integration test module: `run_shard.py test_fleet 2 3` runs the second
of three. The module's tests, in unittest's order, are dealt round robin, so ctest -j can run
a long module's parts beside other tests and a test added to it is never left out.

Every test starts its own processes (ProcessTestCase.setUp), so a shard needs nothing from
another; module fixtures (setUpModule) run once per shard."""
import os
import sys
import unittest


def flatten(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from flatten(test)
        else:
            yield test


def shard_tests(module, shard, count):
    """The tests unittest.main would run for the module (its own loader, load_tests included),
    every count-th from the shard-th."""
    tests = list(flatten(unittest.TestLoader().loadTestsFromModule(module)))
    return unittest.TestSuite(tests[shard - 1::count])


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: run_shard.py MODULE SHARD COUNT (SHARD from 1 to COUNT)")
    module_name, shard, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if not 1 <= shard <= count:
        sys.exit("shard %d is not from 1 to %d" % (shard, count))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    module = __import__(module_name)
    suite = shard_tests(module, shard, count)
    if suite.countTestCases() == 0:
        # An empty shard would pass whatever the product does.
        sys.exit("%s has no test in shard %d of %d: use fewer shards" % (module_name, shard, count))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
