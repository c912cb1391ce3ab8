"""A local test of the handler, without the platform: `python3 test_main.py`."""

import json
import os
import time
import unittest

import main

HERE = os.path.dirname(os.path.abspath(__file__))


class Context:
    """What the platform passes as `context`."""

    def __init__(self):
        self.run_id = "local-test"
        self.function = "{{name}}"
        self.version = 0
        self.memory_mb = 128
        self.deadline_ms = int(time.time() * 1000) + 3000

    def remaining_ms(self):
        return max(0, self.deadline_ms - int(time.time() * 1000))


class HandleTest(unittest.TestCase):
    def test_sample_event(self):
        with open(os.path.join(HERE, "event.json")) as f:
            event = json.load(f)
        result = main.handle(event, Context())
        json.dumps(result)  # the result must be JSON
        self.assertEqual(result["message"], "hello, %s!" % event["name"])

    def test_without_a_name(self):
        self.assertEqual(main.handle({}, Context())["message"], "hello, world!")


if __name__ == "__main__":
    unittest.main()
