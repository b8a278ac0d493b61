select
    c.customer_id,
    c.name as customer_name,
    c.country_code
from {{ source('shop', 'customers') }} as c
