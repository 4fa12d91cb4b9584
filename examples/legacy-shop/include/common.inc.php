<?php
// Shared by every page of the demo shop: configuration, the database, the
// logs and the HTML page the notify handlers print. No framework, in the
// manner of DedeCMS's include/common.inc.php and ECShop's includes/init.php.
// This directory is outside the document root (public/).

define('SHOP_ROOT', dirname(__DIR__));
date_default_timezone_set('Asia/Shanghai');

// Settings. A legacy shop keeps them in a PHP file or its database; here the
// defaults point at callgate's public demo keys (certs/dev/) and each can be
// overridden from the environment (tests/legacy_shop.rs uses its fixtures').
function shop_config($name)
{
    static $config = null;
    if ($config === null) {
        $dev = dirname(dirname(SHOP_ROOT)) . '/certs/dev';
        $config = array(
            // where shop.sqlite and logs/ live
            'data_dir' => getenv('SHOP_DATA_DIR') ?: SHOP_ROOT . '/data',
            // Alipay public key (open platform, RSA2), checked by include/payment/alipay.php
            'alipay_public_key' => getenv('SHOP_ALIPAY_PUBLIC_KEY') ?: $dev . '/alipay_public.pem',
            // legacy Alipay MD5 key (安全校验码), checked by include/payment/alipay_md5.php
            'alipay_md5_key' => getenv('SHOP_ALIPAY_MD5_KEY') ?: $dev . '/alipay_md5.key',
            // the secret shared with callgate (its upstream_secret_file), for callgate_notify.php
            'callgate_secret' => getenv('SHOP_CALLGATE_SECRET') ?: $dev . '/upstream.secret',
        );
    }
    return $config[$name];
}

// A secret file's contents, without the one trailing newline (as callgate reads it).
function shop_secret($name)
{
    $text = file_get_contents(shop_config($name));
    return $text === false ? '' : preg_replace('/\r?\n\z/', '', $text);
}

function shop_data_dir()
{
    $dir = shop_config('data_dir');
    if (!is_dir($dir . '/logs')) {
        mkdir($dir . '/logs', 0775, true);
    }
    return $dir;
}

// The database; created from schema.sql on the first request.
function shop_db()
{
    static $db = null;
    if ($db === null) {
        $file = shop_data_dir() . '/shop.sqlite';
        $db = new PDO('sqlite:' . $file, null, null, array(PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION));
        $db->exec('PRAGMA busy_timeout = 5000');
        // By the table, not the file: an empty file (made by the sqlite3
        // CLI, say) still gets the schema.
        $fresh = $db->query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orders'")->fetchColumn() === false;
        if ($fresh) {
            $db->exec(file_get_contents(SHOP_ROOT . '/schema.sql'));
        }
    }
    return $db;
}

function shop_order($out_trade_no)
{
    $q = shop_db()->prepare('SELECT * FROM orders WHERE out_trade_no = ?');
    $q->execute(array($out_trade_no));
    return $q->fetch(PDO::FETCH_ASSOC);
}

// Marks an order paid and records the payment. Naive on purpose, like the
// plugins callgate protects: no "already paid?" check, so every call ships
// the goods again (paid_count and the payments table show it).
function shop_mark_paid($handler, $out_trade_no, $trade_no, $amount, $subject)
{
    $db = shop_db();
    $db->beginTransaction();
    $db->prepare("UPDATE orders SET status = 'paid', paid_count = paid_count + 1, paid_at = ? WHERE out_trade_no = ?")
        ->execute(array(date('c'), $out_trade_no));
    $db->prepare('INSERT INTO payments (out_trade_no, handler, trade_no, amount, subject, received_at) VALUES (?, ?, ?, ?, ?, ?)')
        ->execute(array($out_trade_no, $handler, $trade_no, $amount, $subject, date('c')));
    $db->commit();
    $order = shop_order($out_trade_no);
    return (int) $order['paid_count'];
}

// One line per handler call in data/logs/notify.log: when, which handler,
// what it decided, and who called (REMOTE_ADDR, and X-Forwarded-For as set
// by callgate or a proxy).
function shop_log($handler, $message)
{
    $from = $_SERVER['REMOTE_ADDR'];
    if (isset($_SERVER['HTTP_X_FORWARDED_FOR'])) {
        $from .= ' xff=' . $_SERVER['HTTP_X_FORWARDED_FOR'];
    }
    // one line each, whatever a caller put in a field
    $line = preg_replace('/[\x00-\x1f\x7f]/', '?', date('c') . ' ' . $handler . ' ' . $message . ' from=' . $from) . "\n";
    file_put_contents(shop_data_dir() . '/logs/notify.log', $line, FILE_APPEND | LOCK_EX);
}

// The page a handler prints: an HTML message, never the bare "success" the
// platform wants (DedeCMS shows ShowMsg(), ECShop its respond.dwt page).
// Only a page for a completed payment carries the marker <!-- notify-ok -->,
// which callgate's routes name as success_body. Nothing from the
// notification is printed unescaped, so a notification cannot smuggle the
// marker into a failure page.
function shop_page($ok, $message, $status = 200)
{
    http_response_code($status);
    header('Content-Type: text/html; charset=utf-8');
    $title = $ok ? '支付成功 / Payment received' : '支付失败 / Payment not accepted';
    echo "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>", $title, "</title></head>\n<body>\n";
    echo '<h1>', $title, "</h1>\n<p>", htmlspecialchars($message, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8'), "</p>\n";
    echo '<p><a href="/">返回 / back to the shop</a></p>', "\n";
    if ($ok) {
        echo "<!-- notify-ok -->\n";
    }
    echo "</body></html>\n";
}

// A form field as a string ('' when missing or not a string).
function shop_field($params, $name)
{
    return isset($params[$name]) && is_string($params[$name]) ? $params[$name] : '';
}
