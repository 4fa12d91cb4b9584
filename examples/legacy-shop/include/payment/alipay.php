<?php
// Alipay open platform notifications (RSA2 / RSA), checked by the shop itself
// the way the legacy plugins do with Alipay's PHP SDK (AopClient::rsaCheckV1):
// drop sign and sign_type, drop empty values, ksort, join key=value with &,
// then openssl_verify with Alipay's public key. Behind callgate (forward =
// "original") this keeps working unchanged: callgate passes the bytes on.

function alipay_respond()
{
    $params = $_POST;
    $sign = shop_field($params, 'sign');
    $sign_type = shop_field($params, 'sign_type');
    unset($params['sign'], $params['sign_type']);
    ksort($params);
    $pairs = array();
    foreach ($params as $key => $value) {
        if (is_string($value) && trim($value) !== '') {
            $pairs[] = $key . '=' . $value;
        }
    }
    $public_key = openssl_pkey_get_public(file_get_contents(shop_config('alipay_public_key')));
    $algo = $sign_type === 'RSA' ? OPENSSL_ALGO_SHA1 : OPENSSL_ALGO_SHA256;
    $verified = $public_key !== false
        && openssl_verify(implode('&', $pairs), (string) base64_decode($sign), $public_key, $algo) === 1;

    $out_trade_no = shop_field($_POST, 'out_trade_no');
    if (!$verified) {
        shop_log('alipay', "out_trade_no=$out_trade_no sign=bad");
        shop_page(false, '签名错误 / bad signature');
        return;
    }
    $status = shop_field($_POST, 'trade_status');
    if ($status !== 'TRADE_SUCCESS' && $status !== 'TRADE_FINISHED') {
        shop_log('alipay', "out_trade_no=$out_trade_no sign=ok trade_status=$status ignored");
        shop_page(true, "trade $out_trade_no: $status");
        return;
    }
    if (!shop_order($out_trade_no)) {
        shop_log('alipay', "out_trade_no=$out_trade_no sign=ok order=unknown");
        shop_page(false, "订单不存在 / no order $out_trade_no");
        return;
    }
    $count = shop_mark_paid('alipay', $out_trade_no, shop_field($_POST, 'trade_no'),
        shop_field($_POST, 'total_amount'), shop_field($_POST, 'subject'));
    shop_log('alipay', "out_trade_no=$out_trade_no sign=ok paid_count=$count");
    shop_page(true, "订单 $out_trade_no 已付款 / order paid");
}
