<?php
// The FiboSMS push receiver a business would otherwise write: one plain PHP page, for the
// benchmark only (bench/run.py runs it under php-fpm and php-cgi beside receiver.py).
//
// The same semantics as receiver.py: GET ?message=&phone=&guid=, the secret as the URL's last
// path segment (FIBOSMS_TOKEN), 200 <Status>2</Status> only after the row is committed with
// synchronous=FULL in WAL mode, a retry of a known guid counted and never stored twice
// (UNIQUE guid, checked and inserted in one BEGIN IMMEDIATE transaction), anything else
// <Status>1</Status> with a 4xx or 503. PDO, a connection per request, as most pages are.

function answer($code, $done) {
    http_response_code($code);
    header('Content-Type: text/xml; charset=utf-8');
    header('Cache-Control: no-store');
    echo $done ? '<Status>2</Status>' : '<Status>1</Status>';
    exit;
}

$token = $_SERVER['FIBOSMS_TOKEN'] ?? '';
$path = $_SERVER['PATH_INFO'] ?? '';
$offered = substr(strrchr('/' . rtrim($path, '/'), '/'), 1);
if ($token === '' || !hash_equals($token, $offered)) {
    answer(403, false);
}
$guid = trim($_GET['guid'] ?? '');
$phone = trim($_GET['phone'] ?? '');
$message = $_GET['message'] ?? '';
if ($guid === '' || $phone === '' || strlen($guid) > 128 || strlen($phone) > 32) {
    answer(400, false);
}

try {
    $db = new PDO('sqlite:' . $_SERVER['FIBOSMS_DB'], null, null,
                  [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
    $db->exec('PRAGMA journal_mode = WAL');
    $db->exec('PRAGMA synchronous = FULL');
    $db->exec('CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY, guid TEXT NOT NULL UNIQUE, phone TEXT NOT NULL,
        message TEXT NOT NULL, raw_query TEXT NOT NULL, remote_addr TEXT,
        received_at TEXT NOT NULL, deliveries INTEGER NOT NULL DEFAULT 1,
        last_delivery_at TEXT NOT NULL)');
    $now = gmdate('Y-m-d\TH:i:s\Z');
    $db->exec('BEGIN IMMEDIATE');
    $find = $db->prepare('SELECT id FROM messages WHERE guid = ?');
    $find->execute([$guid]);
    if ($find->fetchColumn() === false) {
        $db->prepare('INSERT INTO messages (guid, phone, message, raw_query, remote_addr,
            received_at, last_delivery_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
           ->execute([$guid, $phone, $message, $_SERVER['QUERY_STRING'] ?? '',
                      $_SERVER['REMOTE_ADDR'] ?? null, $now, $now]);
    } else {
        $db->prepare('UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ?
            WHERE guid = ?')->execute([$now, $guid]);
    }
    $db->exec('COMMIT');
} catch (PDOException $e) {
    error_log('fibosms-receiver.php: 503 storage failed: ' . $e->getMessage());
    answer(503, false);
}
answer(200, true);
