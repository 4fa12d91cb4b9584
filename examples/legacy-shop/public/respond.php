<?php
// Payment callbacks, ECShop style: the notify URL given to the platform is
// respond.php?code=<payment module>, and the module's respond() decides.
require_once dirname(__DIR__) . '/include/common.inc.php';

$modules = array('alipay', 'alipay_md5');
$code = isset($_GET['code']) && is_string($_GET['code']) ? $_GET['code'] : '';
if (!in_array($code, $modules, true)) {
    shop_page(false, 'unknown payment module', 404);
    exit;
}
require_once SHOP_ROOT . '/include/payment/' . $code . '.php';
call_user_func($code . '_respond');
