-- A demo catalogue so a fresh install has something to sell. Runs once; a
-- shop that has deleted or changed these products keeps its own data.
INSERT INTO product.products (id, sku, name, description, price_cents, stock) VALUES
    ('00000000-0000-4000-8000-000000000001', 'MUG-001',  'Enamel camp mug',        'Speckled blue enamel, 350 ml.',            1450, 120),
    ('00000000-0000-4000-8000-000000000002', 'TEE-001',  'Organic cotton tee',     'Heavyweight, garment dyed, unisex.',       2900,  80),
    ('00000000-0000-4000-8000-000000000003', 'BAG-001',  'Waxed canvas tote',      'Carries a week of groceries.',             5400,  40),
    ('00000000-0000-4000-8000-000000000004', 'BOT-001',  'Insulated bottle',       'Keeps cold for 24 hours, 750 ml.',         3200,  60),
    ('00000000-0000-4000-8000-000000000005', 'NOTE-001', 'Dot-grid notebook',      'A5, 192 pages, lies flat.',                1800, 150),
    ('00000000-0000-4000-8000-000000000006', 'PEN-001',  'Brass pen',              'Solid brass, refillable.',                 4500,  30),
    ('00000000-0000-4000-8000-000000000007', 'CAP-001',  'Six-panel cap',          'Washed cotton twill.',                     2500,  70),
    ('00000000-0000-4000-8000-000000000008', 'SOCK-001', 'Merino hiking socks',    'Cushioned sole, two pairs.',               1900, 200),
    ('00000000-0000-4000-8000-000000000009', 'LAMP-001', 'Rechargeable lantern',   'Warm light, 40 hours a charge.',           6900,  15),
    ('00000000-0000-4000-8000-00000000000a', 'KNIF-001', 'Folding pocket knife',   'Olive wood handle, 7 cm blade.',           3900,   5)
ON CONFLICT DO NOTHING;
