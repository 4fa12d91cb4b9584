<?php
// Legacy Alipay (create_direct_pay_by_user, MD5 partner key), checked the
// way the DedeCMS and ECShop plugins check it: fold $_POST into $_GET (the
// notify URL is respond.php?code=alipay_md5, so `code` arrives by GET),
// ksort, join key=value with & over everything but sign, sign_type and code
// (empty values included), append the key, md5. The bytes are used as they
// arrive: a GBK shop's notifications are GBK, and the MD5 covers those bytes.

function alipay_md5_respond()
{
    foreach ($_POST as $key => $value) {
        $_GET[$key] = $value;
    }
    $params = $_GET;
    ksort($params);
    $string = '';
    foreach ($params as $key => $value) {
        if ($key !== 'sign' && $key !== 'sign_type' && $key !== 'code' && is_string($value)) {
            $string .= $key . '=' . $value . '&';
        }
    }
    $string = substr($string, 0, -1) . shop_secret('alipay_md5_key');
    $verified = hash_equals(md5($string), shop_field($params, 'sign'));

    $out_trade_no = shop_field($params, 'out_trade_no');
    if (!$verified) {
        shop_log('alipay_md5', "out_trade_no=$out_trade_no sign=bad");
        shop_page(false, '签名错误 / bad signature');
        return;
    }
    $status = shop_field($params, 'trade_status');
    $paid = array('TRADE_SUCCESS', 'TRADE_FINISHED', 'WAIT_SELLER_SEND_GOODS');
    if (!in_array($status, $paid, true)) {
        shop_log('alipay_md5', "out_trade_no=$out_trade_no sign=ok trade_status=$status ignored");
        shop_page(true, "trade $out_trade_no: $status");
        return;
    }
    if (!shop_order($out_trade_no)) {
        shop_log('alipay_md5', "out_trade_no=$out_trade_no sign=ok order=unknown");
        shop_page(false, "订单不存在 / no order $out_trade_no");
        return;
    }
    $count = shop_mark_paid('alipay_md5', $out_trade_no, shop_field($params, 'trade_no'),
        shop_field($params, 'total_fee'), shop_field($params, 'subject'));
    shop_log('alipay_md5', "out_trade_no=$out_trade_no sign=ok paid_count=$count");
    shop_page(true, "订单 $out_trade_no 已付款 / order paid");
}
