"""deploy/fibosms-receiver.service: systemd accepts it, and its ExecStart runs as written.

The tests run where systemd is not running (CI containers), so the unit is checked with
systemd-analyze verify and its ExecStart command is started directly, as systemd would start
it: with the unit's Environment= and EnvironmentFile (deploy/fibosms-receiver.env), as an
unprivileged user, with only the paths, the port and the secret swapped in.
"""
import os
import shutil
import subprocess

import servers


def test_systemd_analyze_verify_accepts_unit():
    """systemd-analyze verify reports no error and no warning for the unit."""
    tool = shutil.which('systemd-analyze', path=servers.SERVER_ENV['PATH'])
    assert tool, 'systemd-analyze is missing (apt-get install systemd)'
    done = subprocess.run([tool, 'verify', os.path.join(servers.DEPLOY,
                                                        'fibosms-receiver.service')],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert (done.returncode, done.stdout.decode()) == (0, '')


def test_systemd_execstart_runs_as_written():
    """The unit's ExecStart starts the server on 127.0.0.1, which stores a push."""
    ws = servers.Workspace('systemd')
    receiver = None
    try:
        receiver = servers.Receiver(ws).start()
        assert receiver.argv[:2] == [servers.SYSTEM_PYTHON, os.path.join(ws.app, 'receiver.py')]
        assert receiver.listening == ['Listening on http://127.0.0.1:%d/\n' % receiver.port,
                                      'Database: %s\n' % ws.db]
        site = servers.Site(base='http://127.0.0.1:%d/' % receiver.port, db=ws.db,
                            access_log=None, folder_url=None)
        servers.check_vietnamese_push_stored(site)
        assert os.stat(ws.db).st_uid == ws.uid              # the unit's user owns its data
        assert os.stat(ws.db).st_mode & 0o077 == 0          # UMask=0077: nobody else reads it
    finally:
        if receiver is not None:
            receiver.stop()
        ws.remove()


def test_systemd_environment_file_is_valid_for_systemd():
    """Every line of the shipped EnvironmentFile is a comment, blank, or NAME=value."""
    for line in servers.snippet('fibosms-receiver.env').splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith('#'):
            name, equals, value = stripped.partition('=')
            assert equals and name.isidentifier() and value and ' ' not in value, line
