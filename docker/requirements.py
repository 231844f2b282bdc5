"""Print the project's runtime requirements (pyproject.toml [project].dependencies), one per line.

Used by docker/wheelhouse.sh and by the Dockerfile, so both install exactly the same list and the
dependency layer of the image depends on pyproject.toml alone, not on the code.
"""

import sys
import tomllib

path = sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"
with open(path, "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
