"""Where the tests find the project and the shared development data, wherever a test module lives below tests/."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
