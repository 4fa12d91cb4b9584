<?php
// Router for PHP's built-in server:
//   php -S 127.0.0.1:8080 -t public router.php
// It writes the access log nginx or Apache would write (data/logs/access.log:
// time, client, method, URI), then returns false so the server runs the
// requested script as usual. php-fpm behind nginx does not need it.
require_once __DIR__ . '/include/common.inc.php';

$line = sprintf("%s %s %s %s\n", date('c'), $_SERVER['REMOTE_ADDR'], $_SERVER['REQUEST_METHOD'], $_SERVER['REQUEST_URI']);
file_put_contents(shop_data_dir() . '/logs/access.log', preg_replace('/[\x00-\x09\x0b-\x1f\x7f]/', '?', $line), FILE_APPEND | LOCK_EX);
return false;
