select
    o.order_id,
    o.customer_id,
    o.amount_cents / 100.0 as amount,
    o.ordered_at
from {{ source('shop', 'orders') }} as o
