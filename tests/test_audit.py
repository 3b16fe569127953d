"""docs/AUDIT.md's references hold: each function it names covers the lines it gives, and the
code a CGI push runs is the files and the line count it states."""
import importlib
import inspect
import os
import re
import subprocess
import sys

from conftest import DONE, ROOT

# `module.name` (lines A–B), `module.name`, lines A–B, `a.f` and `a.g` (lines A–B)
REFERENCE = re.compile(r'`(\w+)\.([\w.]+)`(?: and `\w+\.[\w.]+`)?(?: \(|, )lines (\d+)–(\d+)')
PUSH_LIMIT = 800    # lines a CGI push may load: one sitting (README, docs/AUDIT.md)


def audit():
    with open(os.path.join(ROOT, 'docs', 'AUDIT.md'), encoding='utf-8') as f:
        return ' '.join(f.read().split())


def span(module, name):
    """(first line, last line) of `name` (a function, a class, Class.method) in `module`."""
    obj = importlib.import_module(module)
    for part in name.split('.'):
        obj = getattr(obj, part)
    if isinstance(obj, type) and obj.__module__ != module:     # not its own: look no further
        raise AssertionError('%s.%s is not defined in %s' % (module, name, module))
    lines, start = inspect.getsourcelines(obj)
    return start, start + len(lines) - 1


def test_every_line_range_in_the_audit_is_its_functions():
    """`module.name` (lines A–B): `name` starts at A and ends at B, or ends at B where two
    functions are named together (the first starts at A)."""
    found = REFERENCE.findall(audit())
    assert len(found) >= 20, found
    wrong = []
    for module, name, first, last in found:
        start, end = span(module, name)
        together = re.search(r'`%s\.%s` and `(\w+)\.([\w.]+)`(?: \(|, )lines %s' % (
            module, re.escape(name), first), audit())
        if together:
            end = span(*together.groups())[1]
        if (start, end) != (int(first), int(last)):
            wrong.append('%s.%s is lines %d–%d, not %s–%s' % (module, name, start, end,
                                                                first, last))
    assert wrong == []


def loaded_by_a_cgi_push(tmp_path):
    """The project's modules a CGI GET push with a secret loads (sys.modules at its end)."""
    code = ('import atexit, sys\n'
            'atexit.register(lambda: sys.stderr.write("FILES " + " ".join(sorted(set(\n'
            '    m.__file__ for m in list(sys.modules.values())\n'
            '    if (getattr(m, "__file__", None) or "").startswith(%r))))))\n'
            'path = %r\n'
            'exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__",'
            ' "__file__": path})' % (ROOT + os.sep, os.path.join(ROOT, 'receiver.py')))
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': 'message=hi&phone=0912345678&guid=audit-1',
           'REMOTE_ADDR': '192.0.2.1', 'PATH_INFO': '/a-long-enough-secret',
           'FIBOSMS_TOKEN': 'a-long-enough-secret', 'HOME': str(tmp_path)}
    env.update({k: v for k, v in os.environ.items() if k in ('LD_LIBRARY_PATH',)})
    done = subprocess.run([sys.executable, '-S', '-c', code], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)
    assert done.stdout.endswith(DONE), done.stderr
    return [os.path.relpath(path, ROOT) for path in
            done.stderr.decode().rpartition('FILES ')[2].split()] + ['receiver.py']


def test_a_cgi_push_runs_the_files_and_lines_the_audit_states(tmp_path):
    """A CGI push loads receiver.py and storage.py alone, as many lines as docs/AUDIT.md says,
    and no more than PUSH_LIMIT."""
    files = sorted(set(loaded_by_a_cgi_push(tmp_path)))
    assert files == ['receiver.py', 'storage.py']
    total = 0
    for name in files:
        with open(os.path.join(ROOT, name), encoding='utf-8') as f:
            total += len(f.read().splitlines())
    assert total <= PUSH_LIMIT
    assert '`receiver.py` and `storage.py`, %d lines together' % total in audit()
