<?php
// A notify handler written for callgate: it checks no platform signature and
// holds no platform key. It trusts only X-Callgate-Signature (HMAC-SHA256 with
// the secret shared with callgate) and reads callgate's normalized JSON, so
// one handler serves every platform callgate verifies (forward = "normalized").
require_once dirname(__DIR__) . '/include/common.inc.php';

$body = file_get_contents('php://input');
$sig = sscanf(isset($_SERVER['HTTP_X_CALLGATE_SIGNATURE']) ? $_SERVER['HTTP_X_CALLGATE_SIGNATURE'] : '', 't=%d,v1=%s');
$trusted = is_array($sig) && is_string($sig[1]) && abs(time() - $sig[0]) < 300
    && hash_equals(hash_hmac('sha256', $sig[0] . '.' . $body, shop_secret('callgate_secret')), $sig[1]);
if (!$trusted) {
    shop_log('callgate', 'signature=bad');
    shop_page(false, 'not from callgate', 403);
    exit;
}

$event = json_decode($body, true);
$out_trade_no = is_array($event) ? shop_field($event, 'out_trade_no') : '';
$provider = is_array($event) ? shop_field($event, 'provider') : '';
$event_id = is_array($event) ? shop_field($event, 'event_id') : '';
if (!is_array($event) || shop_field($event, 'status') !== 'paid' || !isset($event['amount_fen']) || !is_int($event['amount_fen'])) {
    shop_log('callgate', "provider=$provider event_id=$event_id out_trade_no=$out_trade_no signature=ok ignored");
    shop_page(true, "event $event_id noted");
    exit;
}
$order = shop_order($out_trade_no);
if (!$order) {
    shop_log('callgate', "provider=$provider event_id=$event_id out_trade_no=$out_trade_no signature=ok order=unknown");
    shop_page(false, "订单不存在 / no order $out_trade_no");
    exit;
}
// Only the order's own amount and currency pay it (integers: fen, never floats).
$fen = $event['amount_fen'];
$amount = sprintf('%d.%02d', intdiv($fen, 100), $fen % 100);
$currency = shop_field($event, 'currency');
if ($fen < 0 || $currency !== 'CNY' || $amount !== $order['amount']) {
    shop_log('callgate', "provider=$provider event_id=$event_id out_trade_no=$out_trade_no signature=ok amount=$currency:$amount refused");
    shop_page(false, "金额不符 / amount differs for $out_trade_no");
    exit;
}
// Credit once per order, not per event: one payment can be two events (Alipay
// sends TRADE_SUCCESS, then TRADE_FINISHED under a new notify_id). Claiming the
// unpaid order is one statement, so two events at once cannot both ship.
$claim = shop_db()->prepare("UPDATE orders SET status = 'paid' WHERE out_trade_no = ? AND status = 'unpaid'");
$claim->execute(array($out_trade_no));
if ($claim->rowCount() !== 1) {
    shop_log('callgate', "provider=$provider event_id=$event_id out_trade_no=$out_trade_no signature=ok already_paid");
    shop_page(true, "订单 $out_trade_no 已付款 / order already paid");
    exit;
}
$subject = isset($event['fields']['subject']) && is_string($event['fields']['subject']) ? $event['fields']['subject'] : '';
$count = shop_mark_paid('callgate', $out_trade_no, shop_field($event, 'provider_trade_no'), $amount, $subject);
shop_log('callgate', "provider=$provider event_id=$event_id out_trade_no=$out_trade_no signature=ok paid_count=$count");
shop_page(true, "订单 $out_trade_no 已付款 / order paid");
