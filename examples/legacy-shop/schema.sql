-- The demo shop's database (SQLite). include/common.inc.php runs this file
-- when it creates data/shop.sqlite on the first request; every statement is
-- idempotent, so running it again changes nothing.

-- One row per order. `paid_count` is not something a real shop keeps: it
-- counts how many times a notify handler marked the order paid, so double
-- processing is visible (a naive legacy handler adds one on every call).
CREATE TABLE IF NOT EXISTS orders (
    out_trade_no TEXT PRIMARY KEY,
    amount       TEXT NOT NULL,                -- yuan, as the shop shows it: '88.88'
    subject      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'unpaid',  -- 'unpaid' or 'paid'
    paid_count   INTEGER NOT NULL DEFAULT 0,
    paid_at      TEXT
);

-- One row per payment a handler recorded: a second row for one order is a
-- second shipment.
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    out_trade_no TEXT NOT NULL,
    handler      TEXT NOT NULL,                -- 'alipay', 'alipay_md5', 'callgate'
    trade_no     TEXT,                         -- the platform's trade number
    amount       TEXT NOT NULL,                -- what the notification says was paid
    subject      TEXT,                         -- as received: a GBK shop stores GBK bytes
    received_at  TEXT NOT NULL
);

-- Seed orders. The CG2026... ones match the signed notifications committed in
-- tests/fixtures (out_trade_no and amount), so tests/legacy_shop.rs can pay
-- them; the DEMO... ones are for examples/legacy-shop/README.md.
INSERT OR IGNORE INTO orders (out_trade_no, amount, subject) VALUES
    -- tests/fixtures/alipay (RSA2): rsa2_trade_success (and its tampered and
    -- duplicate-key copies), rsa2_wrong_key, rsa2_trade_success_2 and _3;
    -- also tests/fixtures/wechat/v2_md5_pay.xml (total_fee 8888)
    ('CG20261122000001', '88.88',  '测试 商品+1'),
    ('CG20261122000007', '88.88',  'forged order'),
    ('CG20261122000013', '19.90',  'order 13'),
    ('CG20261122000014', '120.00', 'order 14'),
    -- tests/fixtures/alipay (RSA2) rsa2_unsorted_decoding is deliberately
    -- missing (CG20261122000015): the shop answers "order not found".
    -- tests/fixtures/alipay_md5: md5_trade_success, md5_trade_finished_2/_3, md5_gbk
    ('CG20261122100001', '88.88',  '测试 商品+1'),
    ('CG20261122100002', '19.90',  'legacy order 2'),
    ('CG20261122100003', '120.00', 'legacy order 3'),
    ('CG20261122100004', '6.00',   '测试商品 中文GBK'),
    -- README demo: `callgate sign ... --param out_trade_no=DEMO...`
    ('DEMO20261122001', '88.88',  'demo order (Alipay RSA2)'),
    ('DEMO20261122002', '88.88',  'demo order (legacy Alipay MD5)'),
    ('DEMO20261122003', '88.88',  'demo order (WeChat Pay)');
