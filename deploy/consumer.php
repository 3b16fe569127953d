<?php
/*
 * The application's side of fibosms-receiver's forwarding: a complete PHP page that takes each
 * SMS the receiver forwards (FIBOSMS_FORWARD_URL), checks it, does its work once, answers 204.
 *
 * The receiver POSTs every stored SMS as Standard Webhooks 1.0 (https://www.standardwebhooks.com):
 * JSON with guid, phone, phone_normalised, message, received_at, deliveries, charset, extra,
 * and the headers webhook-id (the guid), webhook-timestamp (Unix seconds) and
 * webhook-signature ("v1," + base64 of HMAC-SHA256 over "id.timestamp.body"). It answers
 * FiboSMS "done" only once this page answered 2xx; after any other answer it sends the same
 * message again later, with the same webhook-id.
 *
 * This page answers:
 *   204  done: the work is done now, or was done for this webhook-id before
 *   400  a webhook header is missing, or the body is not the receiver's JSON
 *   401  the signature does not match (wrong secret, changed body) or the timestamp is more
 *        than 5 minutes off (a replay of an old request)
 *   405  not POST;  413  a body over 64 KiB
 *   500  not configured, or the work failed: the receiver will send the message again
 * with a one-line reason as text/plain, and one line in the web server's error log (never
 * the message, the phone or the secret).
 *
 * The work and the record of its webhook-id are one SQLite transaction: a message sent again
 * is never handled twice, and a failed one is handled when it comes again.
 *
 * Needs PHP 7.0 or newer with pdo_sqlite (Debian: php-cli or php-fpm, and php-sqlite3).
 */

// CHANGE: the receiver's FIBOSMS_FORWARD_SECRET (whsec_...). Best set in the web server's
// environment (Apache: SetEnv FIBOSMS_FORWARD_SECRET ...; PHP-FPM: env[FIBOSMS_FORWARD_SECRET])
// and left as it is here; if you write it here instead, keep this file unreadable to others.
$SECRET = getenv('FIBOSMS_FORWARD_SECRET');
// CHANGE: the database, OUTSIDE the web root, in a folder the user PHP runs as may write.
// By default fibosms-consumer/ in that user's home folder ($HOME, else its passwd entry):
// /home/you/fibosms-consumer/consumer.sqlite3, made 0700 and 0600. A path inside the web root,
// or inside a folder named public_html, htdocs, httpdocs or html, is refused (500): another
// site of the account (a cPanel addon domain's folder is inside public_html) could serve it.
$DATABASE = getenv('FIBOSMS_CONSUMER_DB') ?: home_folder() . '/fibosms-consumer/consumer.sqlite3';

const TOLERANCE = 300;          // seconds a webhook-timestamp may be off (the spec's 5 minutes)
const MAX_BODY = 65536;         // bytes; the receiver's pushes are far smaller

ini_set('display_errors', '0'); // a PHP error's text goes to the error log, never to the caller


/** Your work with one SMS, inside the transaction: throw to refuse it (500, sent again).
 *  What it does outside this database (a reply SMS, a call to another system) is not undone
 *  if the transaction then fails, and is done again with the next try: make it safe to repeat. */
function handle_sms(PDO $db, array $sms)
{
    // An example: keep it. Replace with yours (a reply, an order, a CRM entry...).
    $db->prepare('INSERT INTO sms (guid, phone, message, received_at) VALUES (?, ?, ?, ?)')
       ->execute([$sms['guid'], $sms['phone'], $sms['message'], $sms['received_at']]);
}


/** End the request with HTTP $code; a refusal also gets its reason and one log line. */
function answer($code, $reason = null, $id = null)
{
    http_response_code($code);
    if ($reason !== null) {
        error_log('fibosms-consumer: ' . $code . ' ' . $reason
                  . ($id === null ? '' : ' (webhook-id ' . substr($id, 0, 200) . ')'));
        header('Content-Type: text/plain; charset=utf-8');
        echo $reason, "\n";
    }
    exit;
}

/** The HMAC key in a "whsec_<base64>" secret, or false. */
function secret_key($secret)
{
    if (!is_string($secret) || strncmp($secret, 'whsec_', 6) !== 0) {
        return false;
    }
    $key = base64_decode(substr($secret, 6), true);
    return ($key !== false && strlen($key) >= 24) ? $key : false;
}

/** Whether one "v1,<base64>" entry of the space-separated $signatures is HMAC-SHA256 of
 *  "$id.$timestamp.$body"; compared in constant time (hash_equals). */
function signature_matches($key, $id, $timestamp, $body, $signatures)
{
    $expected = base64_encode(hash_hmac('sha256', $id . '.' . $timestamp . '.' . $body, $key, true));
    $match = false;
    foreach (explode(' ', $signatures) as $entry) {
        $parts = explode(',', $entry, 2);
        if (count($parts) === 2 && $parts[0] === 'v1' && hash_equals($expected, $parts[1])) {
            $match = true;      // no early exit: every entry takes the same time
        }
    }
    return $match;
}

function home_folder()
{
    $home = getenv('HOME');
    if (!$home && function_exists('posix_getpwuid')) {
        $user = posix_getpwuid(posix_geteuid());
        $home = $user ? $user['dir'] : '';
    }
    return rtrim((string) $home, '/');
}

/** Why $path may not hold the database (a folder a web server may serve), or null. */
function database_problem($path)
{
    if (substr($path, 0, 1) !== '/') {
        return 'the database ' . $path . ' is not an absolute path: set FIBOSMS_CONSUMER_DB';
    }
    $folder = dirname($path);
    $rest = '';
    while (realpath($folder) === false && $folder !== dirname($folder)) {  // not made yet
        $rest = '/' . basename($folder) . $rest;
        $folder = dirname($folder);
    }
    $real = rtrim(realpath($folder), '/') . $rest;
    $root = empty($_SERVER['DOCUMENT_ROOT']) ? false : realpath($_SERVER['DOCUMENT_ROOT']);
    $served = array_intersect(explode('/', strtolower($real)),
                              ['public_html', 'htdocs', 'httpdocs', 'html']);
    if ($served || ($root !== false && strpos($real . '/', rtrim($root, '/') . '/') === 0)) {
        return 'the database ' . $path . ' is in a web root: set FIBOSMS_CONSUMER_DB to a path'
               . ' outside it';
    }
    return null;
}

function open_database($path)
{
    $umask = umask(0077);   // the folder 0700, the database and its journal 0600
    try {
        if (!is_dir(dirname($path))) {
            @mkdir(dirname($path), 0700, true);     // if it fails, PDO says so just below
        }
        $db = new PDO('sqlite:' . $path, null, null,
                      [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
    } finally {
        umask($umask);
    }
    @chmod($path, 0600);    // one made by an older version of this page was 0644
    $db->exec('PRAGMA synchronous = FULL');
    // Every id is kept, not 5 minutes' worth: the receiver may send a message again days later.
    $db->exec('CREATE TABLE IF NOT EXISTS handled (webhook_id TEXT PRIMARY KEY,'
              . ' handled_at INTEGER NOT NULL)');
    $db->exec('CREATE TABLE IF NOT EXISTS sms (guid TEXT PRIMARY KEY, phone TEXT NOT NULL,'
              . ' message TEXT NOT NULL, received_at TEXT NOT NULL)');
    return $db;
}


// -- The request ------------------------------------------------------------------------------

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    header('Allow: POST');
    answer(405, 'POST only');
}
$key = secret_key($SECRET);
if ($key === false) {
    answer(500, 'not configured: FIBOSMS_FORWARD_SECRET is not whsec_ and the base64 of 24+ bytes');
}
$problem = database_problem($DATABASE);
if ($problem !== null) {
    answer(500, 'not configured: ' . $problem);
}
$body = file_get_contents('php://input', false, null, 0, MAX_BODY + 1);
if ($body === false || strlen($body) > MAX_BODY) {
    answer(413, 'body over ' . MAX_BODY . ' bytes');
}
$id = isset($_SERVER['HTTP_WEBHOOK_ID']) ? $_SERVER['HTTP_WEBHOOK_ID'] : '';
$timestamp = isset($_SERVER['HTTP_WEBHOOK_TIMESTAMP']) ? $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] : '';
$signatures = isset($_SERVER['HTTP_WEBHOOK_SIGNATURE']) ? $_SERVER['HTTP_WEBHOOK_SIGNATURE'] : '';
if ($id === '' || $timestamp === '' || $signatures === '') {
    answer(400, 'webhook-id, webhook-timestamp or webhook-signature missing');
}
if (!preg_match('/^[0-9]{1,12}$/', $timestamp) || abs(time() - (int) $timestamp) > TOLERANCE) {
    answer(401, 'webhook-timestamp more than ' . TOLERANCE . ' s away from this clock', $id);
}
if (!signature_matches($key, $id, $timestamp, $body, $signatures)) {
    answer(401, 'signature does not match: the same FIBOSMS_FORWARD_SECRET on both sides?', $id);
}
$sms = json_decode($body, true);
if (!is_array($sms) || !isset($sms['guid'], $sms['phone'], $sms['message'], $sms['received_at'])) {
    answer(400, 'the body is not the receiver\'s JSON', $id);
}

// -- The work, once per webhook-id ------------------------------------------------------------

$db = null;
try {
    $db = open_database($DATABASE);
    $db->exec('BEGIN IMMEDIATE');   // the write lock at once: two deliveries of one id queue
    $seen = $db->prepare('SELECT 1 FROM handled WHERE webhook_id = ?');
    $seen->execute([$id]);
    if ($seen->fetchColumn() === false) {
        handle_sms($db, $sms);
        $db->prepare('INSERT INTO handled (webhook_id, handled_at) VALUES (?, ?)')
           ->execute([$id, time()]);
    }
    $db->exec('COMMIT');
} catch (Throwable $e) {
    if ($db !== null) {
        try {
            $db->exec('ROLLBACK');
        } catch (Throwable $ignored) {  // no transaction was open
        }
    }
    // The class only: your work's own exceptions may quote the message. The database's
    // name what went wrong with it, not the data.
    answer(500, 'the work failed: ' . get_class($e)
                . ($e instanceof PDOException ? ': ' . substr($e->getMessage(), 0, 200) : ''), $id);
}
answer(204);
