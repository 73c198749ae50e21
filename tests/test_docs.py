"""The README and docs/: the generated pages are current, the README is a short front page, and every
link between them leads somewhere. No Ray, no DGL: seconds."""
import importlib.util
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from gnnrec.launch.config import Config
from gnnrec.launch.reference import reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TWO_COMMANDS = """```bash
make demo   # creates the virtualenv if missing, installs, runs the main job on the embedded default
make test   # same set-up, then the test suite (what CI runs: .ci/run)
```"""


def _config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config model, nested sections (also Optional ones) included."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                keys += _config_keys(kind, f"{key}.")
    return keys


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_configuration_md_is_current():
    assert (DOCS / "configuration.md").read_text() == reference(), (
        "docs/configuration.md is stale: run `make docs` "
        "(python -m gnnrec.launch.reference > docs/configuration.md)")


def test_every_config_key_is_in_the_reference():
    text = (DOCS / "configuration.md").read_text()
    keys = _config_keys(Config)
    assert {"ingest.interactions.path", "ingest.social.min_overlap", "train.contrast.weight"} <= set(keys)
    assert [key for key in keys if f"`{key}`" not in text] == []


def test_benchmarks_md_is_current():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "benchmarks.md").read_text() == module.report(), (
        "docs/benchmarks.md is stale: run `make docs` (python bench/report.py > docs/benchmarks.md)")


def test_readme_is_a_short_front_page_that_starts_with_the_two_commands():
    text = README.read_text()
    assert len(README.read_bytes()) <= 12 * 1024
    title, _, rest = text.partition("\n\n")
    assert title == "# gnnrec"
    assert rest.startswith("## Two commands\n\n" + TWO_COMMANDS)


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert {"configuration.md", "benchmarks.md", "results.md", "distributed.md"} <= set(pages)
    assert [page for page in pages if f"](docs/{page})" not in text] == []


def test_every_link_between_readme_and_docs_leads_somewhere():
    broken = []
    for page in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M) if linked.is_file() else []
            if not linked.is_file() or (anchor and anchor not in map(_slug, headings)):
                broken.append(f"{page.name}: {target}")
    assert broken == []
