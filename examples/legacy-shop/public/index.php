<?php
// The shop's front page: its orders, and how often each was marked paid.
require_once dirname(__DIR__) . '/include/common.inc.php';

$orders = shop_db()->query('SELECT * FROM orders ORDER BY out_trade_no')->fetchAll(PDO::FETCH_ASSOC);
header('Content-Type: text/html; charset=utf-8');
echo "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>legacy shop</title></head>\n<body>\n";
echo "<h1>Orders</h1>\n<table border=\"1\">\n<tr><th>out_trade_no</th><th>amount</th><th>subject</th><th>status</th><th>paid_count</th></tr>\n";
foreach ($orders as $o) {
    echo '<tr>';
    foreach (array('out_trade_no', 'amount', 'subject', 'status', 'paid_count') as $column) {
        echo '<td>', htmlspecialchars((string) $o[$column], ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8'), '</td>';
    }
    echo "</tr>\n";
}
echo "</table>\n</body></html>\n";
