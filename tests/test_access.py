"""Who may call: the shared secret (FIBOSMS_TOKEN) and the address allowlist (FIBOSMS_ALLOW)."""
import sqlite3

import pytest

from conftest import DONE, RETRY, rows

SECRET = 's3cr3t-Đà-Lạt'          # non-ASCII on purpose: compared as UTF-8 bytes
SECRET_IN_URL = 's3cr3t-%C4%90%C3%A0-L%E1%BA%A1t'
PUSH = 'guid=g&phone=0912345678&message=hello'


@pytest.fixture
def guarded(make_client):
    """A client of an app that requires SECRET."""
    return make_client(token=SECRET)


def test_token_as_last_path_segment_is_accepted(guarded, db):
    """.../receiver.py/SECRET?... is a trusted push."""
    assert guarded.get('/receiver.py/%s?%s' % (SECRET_IN_URL, PUSH)).body == DONE
    assert len(rows(db)) == 1


def test_token_as_parameter_is_accepted(guarded, db):
    """?token=SECRET&... is a trusted push."""
    assert guarded.get('/receiver.py?token=%s&%s' % (SECRET_IN_URL, PUSH)).body == DONE
    assert len(rows(db)) == 1


@pytest.mark.parametrize('url', [
    '/receiver.py?' + PUSH,                                   # missing
    '/receiver.py/wrong?' + PUSH,                             # wrong
    '/receiver.py/%s?%s' % (SECRET_IN_URL[:-1], PUSH),         # a prefix of it
    '/receiver.py/%sx?%s' % (SECRET_IN_URL, PUSH),             # longer
    '/receiver.py?token=s3cr3t-%D0%E0-Lat&' + PUSH,           # Windows-1258, no dot
    '/receiver.py/?token=&' + PUSH,                           # empty
])
def test_wrong_or_missing_token_is_403_and_stores_nothing(guarded, db, url):
    """Without the secret the push is refused (403, <Status>1</Status>), nothing stored, and
    nothing the caller sent is in the log line: not even its guid."""
    res = guarded.get(url, status=403, expect_errors=True)
    assert res.body == RETRY and res.errors.count('\n') == 1
    assert res.errors == 'fibosms-receiver: answered 1 (HTTP 403): wrong or missing token\n'
    assert rows(db) == []


@pytest.mark.parametrize('method, query, body', [
    pytest.param('GET', 'guid=caller-1&guid=caller-2&phone=0912345678', b'', id='twice'),
    pytest.param('GET', 'guid=caller-1&phone=0912345678&message=' + 'x' * 17000, b'',
                 id='over-16-KiB'),
    pytest.param('GET', 'guid=%s&phone=0912345678' % ('g' * 200), b'', id='long-guid'),
    pytest.param('GET', 'phone=0912345678&caller-param=1', b'', id='no-guid'),
    pytest.param('PUT', 'guid=caller-1&phone=0912345678', b'', id='PUT'),
    pytest.param('POST', '', b'guid=caller-1&guid=caller-2&phone=1', id='POST-body-twice'),
])
def test_caller_without_the_secret_is_403_before_anything_it_sent_is_judged(
        guarded, db, method, query, body):
    """A malformed push from a caller without the secret is 403 all the same: whoever lacks
    the secret learns nothing of how a push is judged, and the log line holds nothing it
    chose (no guid, no parameter name)."""
    res = guarded.request('/receiver.py/wrong?' + query, method=method, body=body,
                          content_type='application/x-www-form-urlencoded',
                          status=403, expect_errors=True)
    assert res.body == RETRY
    assert res.errors == 'fibosms-receiver: answered 1 (HTTP 403): wrong or missing token\n'
    assert rows(db) == []


def test_secret_is_stored_nowhere_and_logged_nowhere(guarded, db):
    """Neither the row (raw_query, extra) nor any log line holds the secret."""
    guarded.get('/receiver.py?token=%s&%s&shortcode=1' % (SECRET_IN_URL, PUSH))
    refused = guarded.get('/receiver.py/%s-x?%s' % (SECRET_IN_URL, PUSH),
                          status=403, expect_errors=True)
    conn = sqlite3.connect(db)
    dump = '\n'.join(conn.iterdump())
    conn.close()
    for text in (dump, refused.errors):
        assert SECRET not in text and SECRET_IN_URL not in text and 'token=' not in text
    assert rows(db)[0]['raw_query'] == PUSH + '&shortcode=1'


@pytest.mark.parametrize('allow, remote', [
    ('203.0.113.7', '203.0.113.7'),
    ('198.51.100.1, 203.0.113.0/24', '203.0.113.200'),
    ('2001:db8::/32', '2001:db8:1::5'),
    ('2001:db8::5', '2001:db8::5'),
    ('203.0.113.7', '::ffff:203.0.113.7'),        # IPv4 seen through a dual-stack socket
])
def test_allowed_address_may_push(make_client, db, allow, remote):
    """An address in FIBOSMS_ALLOW (address, CIDR, IPv4 or IPv6) may push."""
    client = make_client(allow=allow, extra_environ={'REMOTE_ADDR': remote})
    assert client.get('/?' + PUSH).body == DONE
    assert rows(db)[0]['remote_addr'] == remote


@pytest.mark.parametrize('allow, remote', [
    ('203.0.113.7', '203.0.113.8'),
    ('203.0.113.0/24', '203.0.114.1'),
    ('2001:db8::/32', '2001:db9::1'),
    ('203.0.113.7', ''),
])
def test_other_address_is_403(make_client, db, allow, remote):
    """An address outside FIBOSMS_ALLOW is refused and nothing is stored."""
    client = make_client(allow=allow, extra_environ={'REMOTE_ADDR': remote})
    res = client.get('/?' + PUSH, status=403, expect_errors=True)
    assert res.body == RETRY and 'not allowed' in res.errors
    assert rows(db) == []


def test_a_refused_x_forwarded_for_is_logged_only_if_it_is_an_address(make_client, db):
    """What a client wrote in X-Forwarded-For (past a proxy that passes it on) reaches the log
    only as an address: the refusal names no text of the caller's."""
    client = make_client(allow='203.0.113.7', trusted_proxies='127.0.0.1',
                         extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    res = client.get('/?' + PUSH, headers={'X-Forwarded-For': 'Xin chao, ban oi'}, status=403,
                     expect_errors=True)
    assert 'address (not an address) not allowed' in res.errors and 'ban' not in res.errors
    res = client.get('/?' + PUSH, headers={'X-Forwarded-For': 'fe80::1%Xin chao ban oi'},
                     status=403, expect_errors=True)
    assert "address 'fe80::1' not allowed" in res.errors and 'Xin' not in res.errors
    res = client.get('/?' + PUSH, headers={'X-Forwarded-For': '198.51.100.9'}, status=403,
                     expect_errors=True)
    assert "address '198.51.100.9' not allowed" in res.errors
    assert rows(db) == []


def test_forged_x_forwarded_for_is_ignored_without_a_trusted_proxy(make_client, db):
    """A caller cannot claim an allowed address by writing X-Forwarded-For itself."""
    client = make_client(allow='203.0.113.7', extra_environ={'REMOTE_ADDR': '198.51.100.9'})
    client.get('/?' + PUSH, headers={'X-Forwarded-For': '203.0.113.7'},
               status=403, expect_errors=True)
    assert rows(db) == []


def test_x_forwarded_for_from_a_trusted_proxy_names_the_caller(make_client, db):
    """Behind a trusted proxy, the nearest untrusted X-Forwarded-For hop is the caller."""
    client = make_client(allow='203.0.113.7', trusted_proxies='127.0.0.1',
                         extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    client.get('/?' + PUSH, headers={'X-Forwarded-For': '203.0.113.7'})
    assert rows(db)[0]['remote_addr'] == '203.0.113.7'


def test_leftmost_x_forwarded_for_hop_is_not_believed(make_client, db):
    """Only the hop the trusted proxy wrote counts: what the client prepended does not."""
    client = make_client(allow='203.0.113.7', trusted_proxies='127.0.0.1',
                         extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    client.get('/?' + PUSH, headers={'X-Forwarded-For': '203.0.113.7, 198.51.100.9'},
               status=403, expect_errors=True)
    assert rows(db) == []


def test_token_and_allowlist_are_both_required_when_both_are_set(make_client, db):
    """With both settings a caller needs the right address and the secret."""
    client = make_client(token=SECRET, allow='127.0.0.1')
    client.get('/?' + PUSH, status=403, expect_errors=True)
    assert client.get('/%s?%s' % (SECRET_IN_URL, PUSH)).body == DONE
    assert len(rows(db)) == 1
