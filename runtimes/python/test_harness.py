"""Unit tests of the harness's pure parts (the JSON encoder), run on the host by `make test`.
They import the harness as a module: nothing here runs user code."""
import json
import math
import unittest

import numpy as np

import harness


class EncoderTest(unittest.TestCase):
    def same(self, value):
        text = harness._encode(value)
        self.assertEqual(json.loads(text), json.loads(json.dumps(value, default=harness._plain)))
        return text

    def test_plain_values_match_json(self):
        for v in [None, True, False, 0, -5, 10**30, 1.5, -0.0, 1e300, "", "a\"b\\c\n\t\x00\x1f\u2028é😀",
                  [], {}, [1, [2, [3]]], {"k": {"n": None}}, (1, 2), {"é": ["x"]}]:
            self.same(v)

    def test_numpy_values_become_plain(self):
        self.assertEqual(json.loads(harness._encode({"a": np.arange(3), "b": np.float32(1.5), "c": np.int64(7)})),
                         {"a": [0, 1, 2], "b": 1.5, "c": 7})

    def test_non_json_is_rejected(self):
        for bad in [float("nan"), [math.inf], {"x": -math.inf}, {1, 2}, object(), np.float64("nan"), "\ud800"]:
            with self.assertRaises((TypeError, ValueError, UnicodeError)):
                harness._encode(bad)

    def test_non_string_keys_fall_back_to_json(self):
        self.assertEqual(json.loads(harness._encode({1: "a", None: 2})), {"1": "a", "null": 2})

    def test_deep_and_cyclic(self):
        deep = []
        cur = deep
        for _ in range(500):
            nxt = []
            cur.append(nxt)
            cur = nxt
        self.same(deep)
        cyc = []
        cyc.append(cyc)
        with self.assertRaises((ValueError, RecursionError)):
            harness._encode(cyc)


if __name__ == "__main__":
    unittest.main()
