"""Greets someone: an example python-script service with decorated inputs."""
import argparse
import json
import platform

import greetlib  # installed from requirements.txt (a local package directory)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--loud", choices=["true", "false"], default="false")
    parser.add_argument("--tags", default="[]", help="JSON list")
    args = parser.parse_args()
    for _ in range(args.count):
        line = greetlib.greet(args.name)
        print(line.upper() if args.loud == "true" else line)
    print(json.dumps({"python": platform.python_version(), "tags": json.loads(args.tags)}))


if __name__ == "__main__":
    main()
