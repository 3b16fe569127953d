"""python3 receiver.py, the small threaded wsgiref server, started by the ExecStart line of
deploy/fibosms-receiver.service with the settings of deploy/fibosms-receiver.env, as the
unit's user would run it; only the paths, the port and the secret are swapped in.
"""
import pytest

import servers


@pytest.fixture(scope='module')
def site():
    """One receiver.py server, shared by this module's tests."""
    ws = servers.Workspace('wsgiref')
    receiver = None
    try:
        receiver = servers.Receiver(ws).start()
        root = 'http://127.0.0.1:%d/' % receiver.port
        site = servers.Site(
            base=root, db=ws.db, folder_url=None,
            access_log=lambda: ws.log('receiver_stderr.log'),
            forbidden=[root + name for name in servers.DECOYS + (
                'data/messages.sqlite3', 'receiver.py', 'fibosms-receiver.env')])
        site.receiver = receiver
        yield site
    finally:
        if receiver is not None:
            receiver.stop()
        ws.remove()


def test_wsgiref_vietnamese_push_stored_exactly(site):
    """A Vietnamese push is answered <Status>2</Status> and stored character for character."""
    servers.check_vietnamese_push_stored(site)


def test_wsgiref_duplicate_guid_stored_once(site):
    """The gateway's resend of a guid is answered 2 again and leaves one row."""
    servers.check_duplicate_guid_one_row(site)


def test_wsgiref_token_in_path_accepted(site):
    """The secret as the URL's last path segment is accepted."""
    servers.check_token_in_path_works(site)


def test_wsgiref_wrong_token_refused_403(site):
    """A wrong or missing secret gets 403 <Status>1</Status> and stores nothing."""
    servers.check_wrong_token_refused(site)


def test_wsgiref_unit_settings_reach_app(site):
    """The unit's --db names the file the push lands in; its EnvironmentFile's secret holds."""
    servers.check_settings_reach_app(site)
    assert site.receiver.listening[1].strip() == 'Database: %s' % site.db


def test_wsgiref_database_not_downloadable(site):
    """No path gives out the database, its side files or the settings (403)."""
    servers.check_files_not_downloadable(site)


def test_wsgiref_request_log_has_no_query_string(site):
    """The request log (stderr: the journal under systemd) holds no query string nor secret."""
    servers.check_access_log_has_no_query(site)


def test_wsgiref_push_py_reports_success(site):
    """deploy/push.py against the server exits 0 and the push is stored."""
    servers.check_push_py_succeeds(site)


def test_wsgiref_listens_on_loopback_only(site):
    """As the unit starts it, the server listens on 127.0.0.1, for the reverse proxy alone."""
    assert site.receiver.listening[0].strip() == (
        'Listening on http://127.0.0.1:%d/' % site.receiver.port)


def test_wsgiref_push_py_retries_five_times_then_fails(site):
    """deploy/push.py, answered <Status>1</Status>, tries 5 times like the gateway, exits 1."""
    code, output = servers.run_push_py(site.base + servers.WRONG_TOKEN, '--phone',
                                       servers.PHONE, '--message', 'x', '--wait', '0')
    assert code == 1, output
    refused = 'HTTP 403 <Status>1</Status>: failed; the gateway would send it again'
    assert output.count(refused) == 5, output
    assert 'try 5 of 5' in output and 'FAILED' in output, output


def test_wsgiref_push_py_fails_when_nothing_answers(site):
    """deploy/push.py against a port where nothing listens reports no answer and exits 1."""
    url = 'http://127.0.0.1:%d/%s' % (servers.free_port(), servers.TOKEN)
    code, output = servers.run_push_py(url, '--phone', servers.PHONE, '--message', 'x',
                                       '--tries', '2', '--wait', '0')
    assert code == 1, output
    assert output.count('no answer (ConnectionRefusedError') == 2, output
