"""README.md's promises that code can check: the two set-up commands and the figures."""
import os
import re

import receiver
import storage
from conftest import ROOT


def read(name):
    with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        return f.read()


def setup_commands():
    """The commands of README's first code block (comments dropped)."""
    block = re.search(r'```sh\n(.*?)```', read('README.md'), re.S).group(1)
    return [line.split('  #')[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_gives_exactly_two_setup_commands():
    """The first screen gives two commands: run the receiver, run the tests."""
    assert setup_commands() == [
        'python3 receiver.py',
        'python3 -m pip install -r requirements-dev.txt && python3 -m pytest']


def test_ci_runs_the_readme_test_command():
    """.ci/run runs README's test command word for word."""
    assert setup_commands()[1] in read('.ci/run').splitlines()


def test_readme_figures_match_the_code():
    """The limits and timeouts README states are the ones the code uses."""
    text = read('README.md')
    assert receiver.MAX_INPUT == 16 * 1024 and '16 KiB' in text
    assert 'guid over %d' % receiver.MAX_GUID in text
    assert 'phone over %d' % receiver.MAX_PHONE in text
    assert 'waits %d seconds for the hook' % receiver.HANDLER_TIMEOUT in text
    assert 'expires after %d minutes' % (storage.CLAIM_SECONDS // 60) in text
