select
    c.customer_id,
    c.customer_name,
    cc.country_name,
    sum(o.amount) as revenue
from {{ ref('stg_customers') }} as c
join {{ ref('stg_orders') }} as o on o.customer_id = c.customer_id
left join {{ ref('country_codes') }} as cc on cc.code = c.country_code
group by c.customer_id, c.customer_name, cc.country_name
