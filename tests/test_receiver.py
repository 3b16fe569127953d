"""The push protocol: what the page accepts, how it decodes, and what it answers."""
import io
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

import receiver
from conftest import DONE, RETRY, rows
from post import FORM_TYPE

VIETNAMESE = 'Tôi muốn đặt 2 vé, cảm ơn!'


def push(client, query, status=200, body=None, **kwargs):
    """GET /?query; assert the HTTP status and the Status document (2 with 200, else 1, or
    `body`); return the response."""
    res = client.get('/?' + query, status=status, expect_errors=status != 200 or body == RETRY,
                     **kwargs)
    assert res.body == (body or (DONE if status == 200 else RETRY))
    return res


def test_get_push_is_stored_and_answered_2(client, db):
    """A GET push is stored and answered exactly <Status>2</Status>."""
    push(client, 'message=%s&phone=0912345678&guid=g-1' % quote(VIETNAMESE))
    [row] = rows(db)
    assert (row['guid'], row['phone'], row['message']) == ('g-1', '0912345678', VIETNAMESE)
    assert row['deliveries'] == 1 and row['state'] == 'processed'
    assert row['received_at'].endswith('Z') and row['received_at'][10] == 'T'


def test_answer_headers_are_exact(client):
    """The answer is text/xml UTF-8, has a Content-Length and must not be cached."""
    res = push(client, 'phone=1&guid=g')
    assert res.headers['Content-Type'] == 'text/xml; charset=utf-8'
    assert res.headers['Content-Length'] == str(len(DONE))
    assert res.headers['Cache-Control'] == 'no-store'


def test_refusal_answers_status_1_with_the_same_headers(client):
    """A refused push gets <Status>1</Status>, no XML declaration, no newline, same headers."""
    res = push(client, 'phone=1', status=400)
    assert res.body == b'<Status>1</Status>'
    assert res.headers['Content-Type'] == 'text/xml; charset=utf-8'
    assert res.headers['Cache-Control'] == 'no-store'


def test_post_form_is_stored(client, db):
    """POST with a form body is a push like GET."""
    res = client.post('/', {'message': VIETNAMESE, 'phone': '0912345678', 'guid': 'p-1'})
    assert res.body == DONE
    assert rows(db)[0]['message'] == VIETNAMESE


def test_post_reads_query_and_body_together(client, db):
    """POST takes parameters from both the query string and the body."""
    client.post('/?guid=p-2', {'phone': '0912345678', 'message': 'hi'})
    assert (rows(db)[0]['guid'], rows(db)[0]['message']) == ('p-2', 'hi')


def test_post_of_another_content_type_is_415(client, db):
    """A POST body that is not a form is refused, not guessed at."""
    res = client.post('/?guid=g&phone=1', '{"message": "x"}', content_type='application/json',
                      status=415, expect_errors=True)
    assert res.body == RETRY and rows(db) == []


@pytest.mark.parametrize('method', ['PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'])
def test_other_methods_get_405_with_allow(client, db, method):
    """Methods other than GET and POST: 405, with Allow naming the two."""
    res = client.request('/?guid=g&phone=1', method=method, status=405, expect_errors=True)
    assert res.headers['Allow'] == 'GET, POST'
    assert rows(db) == []


@pytest.mark.parametrize('query', ['phone=1', 'guid=&phone=1', 'guid=%20%20&phone=1'])
def test_missing_or_empty_guid_is_400(client, db, query):
    """guid is required and must not be empty once trimmed."""
    res = push(client, query, status=400)
    assert 'guid missing or empty' in res.errors
    assert rows(db) == []


@pytest.mark.parametrize('query', ['guid=g', 'guid=g&phone=', 'guid=g&phone=+%09'])
def test_missing_or_empty_phone_is_400(client, db, query):
    """phone is required and must not be empty once trimmed."""
    res = push(client, query, status=400)
    assert 'phone missing or empty' in res.errors
    assert rows(db) == []


@pytest.mark.parametrize('query', ['guid=g&phone=1', 'guid=g&phone=1&message=',
                                   'guid=g&phone=1&message'])
def test_empty_or_absent_message_is_stored_as_empty_text(client, db, query):
    """An empty SMS is still a message: stored with message ''."""
    push(client, query)
    assert rows(db)[0]['message'] == ''


def test_surrounding_whitespace_is_trimmed_from_guid_and_phone_only(client, db):
    """guid and phone are trimmed; the message is kept exactly, spaces and all."""
    push(client, 'guid=+g-7%20&phone=%090912345678+&message=+hi+')
    row = rows(db)[0]
    assert (row['guid'], row['phone'], row['message']) == ('g-7', '0912345678', ' hi ')


@pytest.mark.parametrize('query', ['guid=a&guid=b&phone=1', 'guid=a&phone=1&phone=2',
                                   'guid=a&phone=1&message=x&message=y',
                                   'guid=a&phone=1&x=1&x=2', 'guid=a&phone=1&%67uid=b'])
def test_parameter_given_twice_is_400(client, db, query):
    """A parameter given twice is ambiguous: 400, nothing stored."""
    res = push(client, query, status=400)
    assert 'given twice' in res.errors
    assert rows(db) == []


def test_a_name_given_twice_is_not_logged_unless_it_is_the_pushs(make_client, db):
    """An extra parameter's name is the caller's text, or the secret itself (a gateway that
    does not escape `&` in a message; a copy of the token as a name): the log does not name it."""
    secret = 'a-test-secret-9f3a'
    client = make_client(token=secret)
    query = 'token=%s&guid=a&phone=1&' % secret
    res = push(client, query + '%s=1&%s=2' % (secret, secret), status=400)
    assert 'parameter (extra) given twice' in res.errors and secret not in res.errors
    res = push(client, query + 'Xin%20ch%C3%A0o=1&Xin%20ch%C3%A0o=2', status=400)
    assert 'parameter (extra) given twice' in res.errors and 'Xin' not in res.errors
    res = push(client, query + 'phone=2', status=400)
    assert "parameter 'phone' given twice" in res.errors
    assert rows(db) == []


def test_parameter_in_both_query_and_body_is_400(client, db):
    """A POST that gives a parameter in the query string and in the body is ambiguous too."""
    res = client.post('/?guid=a&phone=1', {'guid': 'b'}, status=400, expect_errors=True)
    assert res.body == RETRY and rows(db) == []


def test_guid_of_128_characters_is_stored_and_129_is_400(client, db):
    """guid is at most 128 characters."""
    push(client, 'phone=1&guid=' + 'g' * 128)
    push(client, 'phone=1&guid=' + 'h' * 129, status=400)
    assert [r['guid'] for r in rows(db)] == ['g' * 128]


def test_phone_of_32_characters_is_stored_and_33_is_400(client, db):
    """phone is at most 32 characters."""
    push(client, 'guid=a&phone=' + '1' * 32)
    push(client, 'guid=b&phone=' + '1' * 33, status=400)
    assert [r['guid'] for r in rows(db)] == ['a']


def test_query_string_of_16_kib_is_stored_and_one_byte_more_is_414(client, db):
    """The query string may hold 16 KiB; past that the URI is too long."""
    head = 'guid=a&phone=1&message='
    push(client, head + 'x' * (16 * 1024 - len(head)))
    push(client, head.replace('=a', '=b') + 'x' * (16 * 1024 - len(head) + 1), status=414)
    assert [r['guid'] for r in rows(db)] == ['a']


def test_body_over_16_kib_is_413(client, db):
    """A POST body over 16 KiB is too large."""
    res = client.post('/?guid=g&phone=1', {'message': 'x' * (16 * 1024)},
                      status=413, expect_errors=True)
    assert res.body == RETRY and rows(db) == []


def test_extra_parameters_are_kept_with_the_row(client, db):
    """Parameters other than message, phone and guid are stored, none dropped."""
    import json
    push(client, 'guid=g&phone=1&message=m&shortcode=8x77&time=2026-11-25+08%3A00&empty=')
    assert json.loads(rows(db)[0]['extra']) == {
        'shortcode': '8x77', 'time': '2026-11-25 08:00', 'empty': ''}


@pytest.mark.parametrize('encoded, text, charset', [
    (quote(VIETNAMESE), VIETNAMESE, 'utf-8'),
    ('Xin+ch%C3%A0o', 'Xin chào', 'utf-8'),
    ('a%2Bb%3Dc%26d', 'a+b=c&d', 'utf-8'),
    ('%u0110%u1EB7t+v%u00E9', 'Đặt vé', 'utf-8'),
    ('%uD83D%uDE00', '\U0001F600', 'utf-8'),
    ('%uD83D+x', '%uD83D x', 'utf-8'),              # a lone surrogate is kept as text
    ('%D0%E3+%FD%F5', 'Đă ươ', 'cp1258'),           # Windows-1258 bytes
    ('%81%8D', '\x81\x8d', 'latin-1'),              # bytes Windows-1258 leaves undefined
    ('100%+sure%zz', '100% sure%zz', 'utf-8'),      # a '%' that escapes nothing stays
])
def test_message_is_decoded_from_its_bytes(client, db, encoded, text, charset):
    """Percent-escapes, '+' and %uXXXX give bytes read as UTF-8, Windows-1258 or Latin-1."""
    push(client, 'guid=g&phone=1&message=' + encoded)
    row = rows(db)[0]
    assert (row['message'], row['charset']) == (text, charset)
    assert '\ufffd' not in row['message']


def call(app, **environ):
    """Call `app` directly with a testing environ updated by `environ`; return
    (status line, body, error log)."""
    base, errors, started = {}, io.StringIO(), []
    setup_testing_defaults(base)
    base['wsgi.errors'] = errors
    base['REMOTE_ADDR'] = '127.0.0.1'     # this machine: no token or allowlist needed
    base.update(environ)
    result = validator(app)(base, lambda status, headers: started.append(status))
    try:
        body = b''.join(result)
    finally:
        result.close()
    return started[0], body, errors.getvalue()


def test_raw_bytes_in_the_query_string_are_decoded_too(db):
    """Unescaped non-ASCII bytes (latin-1 in the environ, PEP 3333) are UTF-8 text."""
    raw = 'guid=g&phone=1&message=' + VIETNAMESE.encode('utf-8').decode('latin-1')
    assert call(receiver.make_app(db=db), QUERY_STRING=raw)[:2] == ('200 OK', DONE)
    assert rows(db)[0]['message'] == VIETNAMESE


def test_raw_query_gives_back_the_original_bytes(client, db):
    """raw_query holds the query string as received: .encode('latin-1') is the original."""
    query = 'message=%D0%E3t%u1EA1+v%E9&phone=0912345678&guid=g'
    push(client, query)
    assert rows(db)[0]['raw_query'].encode('latin-1') == query.encode('ascii')


def test_raw_query_of_a_post_holds_query_and_body(client, db):
    """For a POST, raw_query is the query string and the body, joined by '&'."""
    client.post('/?guid=p', 'phone=1&message=hi', content_type=FORM_TYPE)
    assert rows(db)[0]['raw_query'] == 'guid=p&phone=1&message=hi'


@pytest.mark.parametrize('phone, normalised', [
    ('0912 345 678', '84912345678'),
    ('+84912345678', '84912345678'),
    ('84912345678', '84912345678'),
    ('0084 912-345-678', '84912345678'),
    ('(091) 234.5678', '84912345678'),
    ('+1 415 555 0100', '14155550100'),
    ('FIBO', None),
])
def test_phone_is_kept_and_normalised_to_international_digits(client, db, phone, normalised):
    """phone is stored as received and as international digits."""
    push(client, 'guid=g&phone=' + quote(phone))
    row = rows(db)[0]
    assert (row['phone'], row['phone_normalised']) == (phone, normalised)


def test_duplicate_guid_stores_one_row_and_counts_the_delivery(client, db):
    """A gateway retry answers 2 again, stores nothing new and counts the delivery."""
    for _ in range(3):
        push(client, 'guid=g&phone=1&message=hi')
    [row] = rows(db)
    assert row['deliveries'] == 3 and row['last_delivery_at'] >= row['received_at']


def test_duplicate_with_other_text_keeps_the_first_and_logs_a_warning(client, db):
    """A later delivery of a guid never overwrites: the first phone and message stay."""
    push(client, 'guid=g&phone=1&message=first')
    res = client.get('/?guid=g&phone=2&message=second', expect_errors=True)
    assert res.body == DONE
    assert 'another phone or message' in res.errors and 'second' not in res.errors
    [row] = rows(db)
    assert (row['phone'], row['message'], row['deliveries']) == ('1', 'first', 2)


def test_refusal_logs_one_line_with_reason_and_guid_but_no_message_text(client):
    """The error log names the reason and the guid, never the message text."""
    res = push(client, 'guid=g-9&message=secret+love+letter', status=400)
    assert res.errors.count('\n') == 1
    assert 'phone missing' in res.errors and "'g-9'" in res.errors
    assert 'love' not in res.errors


def test_storage_failure_answers_try_again_with_200(make_client, tmp_path):
    """When the database cannot be opened, the gateway is told to try again: HTTP 200 and
    <Status>1</Status>, the page its document describes; the log says why."""
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    client = make_client(db=str(blocker / 'messages.sqlite3'))
    res = push(client, 'guid=g&phone=1', body=RETRY)
    assert 'answered 1 (HTTP 200): storage failed' in res.errors


def test_unexpected_error_answers_try_again_without_a_traceback_to_the_caller(db):
    """Anything unforeseen still gets <Status>1</Status>; the traceback goes to the log."""
    class BrokenInput(io.BytesIO):
        def read(self, *args):
            raise RuntimeError('connection reset in the middle of the body')

    status, body, errors = call(receiver.make_app(db=db), REQUEST_METHOD='POST',
                                QUERY_STRING='guid=g', CONTENT_LENGTH='9',
                                CONTENT_TYPE=FORM_TYPE, **{'wsgi.input': BrokenInput()})
    assert (status, body) == ('200 OK', RETRY)
    assert 'Traceback' in errors and 'RuntimeError' in errors
