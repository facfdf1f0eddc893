"""The documentation: a short README that links the guides in docs/, and no link that points nowhere."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / 'docs').glob('*.md'))
LINK = re.compile(r'\]\(([^)\s]+)\)')


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')


def _anchors(path: Path) -> set:
    return {_anchor(line.lstrip('#')) for line in path.read_text(encoding='utf-8').splitlines()
            if line.startswith('#')}


def test_readme_is_the_short_guide_and_links_every_doc():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 250
    for needed in ('make demo', 'make test', 'ARCHITECTURE.md'):
        assert needed in text
    for doc in ('ARCHITECTURE', 'data', 'models', 'training', 'evaluation', 'runtime', 'node', 'bags'):
        assert (ROOT / 'docs' / f'{doc}.md').is_file(), doc
        assert f'docs/{doc}.md' in text, doc


@pytest.mark.parametrize('path', [ROOT / 'README.md'] + DOCS, ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings_that_exist(path):
    for target in LINK.findall(path.read_text(encoding='utf-8')):
        if target.startswith(('http://', 'https://', 'mailto:')):
            continue
        file_part, _, anchor = target.partition('#')
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.exists(), f'{path.name}: broken link {target}'
        if anchor and dest.suffix == '.md':
            assert anchor in _anchors(dest), f'{path.name}: no heading #{anchor} in {dest.name}'
