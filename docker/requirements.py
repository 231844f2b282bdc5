"""Print the project's runtime requirements, one per line: pyproject.toml [project].dependencies, then those of
the optional-dependency groups named after the file (e.g. `tracking`).

Used by docker/wheelhouse.sh and by the Dockerfile, so both install exactly the same list and the
dependency layer of the image depends on pyproject.toml alone, not on the code.
"""

import sys
import tomllib

path = sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"
with open(path, "rb") as f:
    project = tomllib.load(f)["project"]
extras = [project["optional-dependencies"][name] for name in sys.argv[2:]]
print("\n".join(project["dependencies"] + [requirement for extra in extras for requirement in extra]))
