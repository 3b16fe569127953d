"""README.md's and docs/'s promises that code can check: the two set-up commands and the figures."""
import os
import re

import commands
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
    """The limits README states are the ones the code uses."""
    text = read('README.md')
    assert receiver.MAX_INPUT == 16 * 1024 and 'over 16 KiB' in text
    assert 'guid over %d or phone over %d characters' % (receiver.MAX_GUID, receiver.MAX_PHONE) in text
    assert 'At most %d hooks run at once' % storage.MAX_HOOKS in text


def test_forwarding_figures_match_the_code():
    """The hook's waits docs/FORWARDING.md states are the ones the code uses."""
    text = ' '.join(read('docs/FORWARDING.md').split())
    assert 'a push waits %d seconds for its hook' % receiver.HOOK_WAIT in text
    assert 'ends after %d minutes' % (storage.CLAIM_SECONDS // 60) in text
    assert 'after %d seconds)' % receiver.CGI_CLAIM in text


def test_readme_settings_table_names_every_setting_the_code_reads():
    """README's settings table and the settings the code knows are the same names."""
    table = re.search(r'\| name \| default \| meaning \|\n(.*?)\n\n', read('README.md'), re.S).group(1)
    named = re.findall(r'^\| `(FIBOSMS_\w+)`', table, re.M)
    assert sorted(named) == sorted(commands.SETTINGS)
