-- Retry policy (DESIGN section 9): defaults, validation of every field, the backoff table
-- (retry_delay), when a failure is retried (_retry_at) and the error finally seen (_final_error).
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(44);

-- Defaults: the seed's effective ones.
select is(
    _retry_policy(null),
    '{"maximum_attempts": 3, "initial_interval": 1, "backoff_coefficient": 10,
     "maximum_interval": 120, "non_retryable_errors": []}'::jsonb,
    'no policy: 3 attempts, 1 s first delay, coefficient 10, 120 s cap, nothing non-retryable'
);
select is(_retry_policy('{}'), _retry_policy(null), 'an empty policy is the default policy');
select is(
    _retry_policy('{"maximum_attempts": null, "initial_interval": null}'),
    _retry_policy(null),
    'JSON null fields take the defaults'
);
select is(
    _retry_policy('{"maximum_attempts": 5, "non_retryable_errors": ["ValueError"]}'),
    '{"maximum_attempts": 5, "initial_interval": 1, "backoff_coefficient": 10,
     "maximum_interval": 120, "non_retryable_errors": ["ValueError"]}'::jsonb,
    'given fields are kept, missing ones defaulted'
);
select is(
    _retry_policy('{"maximum_attempts": 1, "initial_interval": 0.25, "backoff_coefficient": 1.5,
                   "maximum_interval": 0.25, "non_retryable_errors": []}'),
    '{"maximum_attempts": 1, "initial_interval": 0.25, "backoff_coefficient": 1.5,
     "maximum_interval": 0.25, "non_retryable_errors": []}'::jsonb,
    'a complete policy at the lower bounds is kept as is'
);

-- Invalid policies: 22023 naming the field.
select throws_ok(
    $$select _retry_policy('[3]')$$, '22023',
    'retry policy must be a JSON object, not array', 'a policy that is not an object'
);
select throws_ok(
    $$select _retry_policy('{"max_attempts": 3, "foo": 1}')$$, '22023',
    'retry policy has unknown field(s): foo, max_attempts', 'unknown fields are named'
);
select
    throws_ok(
        format($$select _retry_policy(%L)$$, p.policy), '22023', p.message, p.description
    )
from (
    values
    (
        '{"maximum_attempts": 0}',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not 0',
        'maximum_attempts 0'
    ),
    (
        '{"maximum_attempts": 2.5}',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not 2.5',
        'maximum_attempts not whole'
    ),
    (
        '{"maximum_attempts": "3"}',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not "3"',
        'maximum_attempts as a string'
    ),
    (
        '{"maximum_attempts": 2147483648}',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, '
        || 'not 2147483648',
        'maximum_attempts beyond an integer'
    ),
    (
        '{"initial_interval": 0}',
        'retry policy initial_interval must be a number of seconds > 0, not 0',
        'initial_interval 0'
    ),
    (
        '{"initial_interval": "1s"}',
        'retry policy initial_interval must be a number of seconds > 0, not "1s"',
        'initial_interval as a string'
    ),
    (
        '{"backoff_coefficient": 0.5}',
        'retry policy backoff_coefficient must be a number >= 1, not 0.5',
        'backoff_coefficient below 1'
    ),
    (
        '{"backoff_coefficient": true}',
        'retry policy backoff_coefficient must be a number >= 1, not true',
        'backoff_coefficient not a number'
    ),
    (
        '{"initial_interval": 5, "maximum_interval": 4}',
        'retry policy maximum_interval must be a number of seconds >= initial_interval and '
        || '<= 1e10, not 4',
        'maximum_interval below initial_interval'
    ),
    (
        '{"maximum_interval": 1e11}',
        'retry policy maximum_interval must be a number of seconds >= initial_interval and '
        || '<= 1e10, not 100000000000',
        'maximum_interval too large for an interval'
    ),
    (
        '{"non_retryable_errors": "ValueError"}',
        'retry policy non_retryable_errors must be an array of error type names',
        'non_retryable_errors not an array'
    ),
    (
        '{"non_retryable_errors": ["ValueError", 1]}',
        'retry policy non_retryable_errors must be an array of error type names',
        'non_retryable_errors with a non-string'
    )
) as p (policy, message, description);

-- The backoff table: delay before run n+1 = min(initial * coefficient ^ (n - 1), maximum).
select results_eq(
    $$select a, retry_delay(null, a) from unnest(array[1, 2, 3, 4, 5, 50, 2147483647]) as a$$,
    $$values
        (1, interval '1 second'), (2, interval '10 seconds'), (3, interval '100 seconds'),
        (4, interval '120 seconds'), (5, interval '120 seconds'), (50, interval '120 seconds'),
        (2147483647, interval '120 seconds')$$,
    'default policy: 1 s, 10 s, 100 s, then capped at 120 s (no overflow at any attempt)'
);
select results_eq(
    $$select a, retry_delay('{"initial_interval": 0.5, "backoff_coefficient": 2,
                             "maximum_interval": 5}', a)
      from generate_series(1, 7) as a$$,
    $$values
        (1, interval '0.5 seconds'), (2, interval '1 second'), (3, interval '2 seconds'),
        (4, interval '4 seconds'), (5, interval '5 seconds'), (6, interval '5 seconds'),
        (7, interval '5 seconds')$$,
    'initial 0.5 s, coefficient 2, cap 5 s: 0.5, 1, 2, 4, 5, 5, 5'
);
select results_eq(
    $$select a, retry_delay('{"initial_interval": 2, "backoff_coefficient": 1.5,
                             "maximum_interval": 60}', a)
      from generate_series(1, 4) as a$$,
    $$values
        (1, interval '2 seconds'), (2, interval '3 seconds'), (3, interval '4.5 seconds'),
        (4, interval '6.75 seconds')$$,
    'a fractional coefficient: 2, 3, 4.5, 6.75'
);
select results_eq(
    $$select a, retry_delay('{"initial_interval": 3, "backoff_coefficient": 1}', a)
      from unnest(array[1, 2, 100]) as a$$,
    $$values (1, interval '3 seconds'), (2, interval '3 seconds'), (100, interval '3 seconds')$$,
    'coefficient 1: a constant delay'
);
select is(
    retry_delay('{"initial_interval": 1, "backoff_coefficient": 10, "maximum_interval": 100}', 3),
    interval '100 seconds',
    'a delay exactly at the cap is the cap'
);
select is(
    retry_delay('{"initial_interval": 7, "maximum_interval": 7}', 1),
    interval '7 seconds',
    'initial_interval = maximum_interval: the first delay is the cap'
);
select is(
    retry_delay('{"initial_interval": 1, "maximum_interval": 1e10}', 1000),
    make_interval(secs => 1e10),
    'the largest allowed cap is a valid interval'
);
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select retry_delay(null, 0)$$, '22023', 'retry_delay: attempt must be >= 1, not 0', 'attempt 0 is refused'),
    ($$select retry_delay(null, -3)$$, '22023', 'retry_delay: attempt must be >= 1, not -3', 'a negative attempt is refused'),
    ($$select retry_delay('{"backoff_coefficient": 0}', 1)$$, '22023', 'retry policy backoff_coefficient must be a number >= 1, not 0', 'retry_delay validates the policy')
) as t (call, sqlstate, message, description);

-- _retry_at: when to run again, or null when the failure is final.
select is(_retry_at(t.policy::jsonb, t.attempt, t.error::jsonb), t.retry_at, t.description)
from (
    values
    (
        null, 1, '{"message": "boom"}', '2020-01-01 00:00:01+00'::timestamptz,
        'default policy, 1 failed run: again after 1 s (on the engine clock)'
    ),
    (null, 2, '{}', '2020-01-01 00:00:10+00', 'default policy, 2 failed runs: again after 10 s'),
    (null, 3, '{}', null, 'default policy, 3 failed runs: final'),
    ('{"maximum_attempts": 1}', 1, '{}', null, 'maximum_attempts 1: never retried'),
    (null, 1, '{"code": 500}', '2020-01-01 00:00:01+00', 'an ordinary error code is retried'),
    (
        '{"non_retryable_errors": ["ValueError", "KeyError"]}', 1, '{"type": "KeyError"}', null,
        'an error type listed as non-retryable is final at once'
    ),
    (
        '{"non_retryable_errors": ["ValueError"]}', 1, '{"type": "TypeError"}',
        '2020-01-01 00:00:01+00', 'an error type not listed is retried'
    ),
    (
        null, 1, '{"message": "no type"}', '2020-01-01 00:00:01+00',
        'an error without a type is retried by default'
    )
) as t (policy, attempt, error, retry_at, description);
select results_eq(
    $$select c, _retry_at(null, 1, jsonb_build_object('code', c))
      from unnest(array['410'::jsonb, '596', '597', '598', '"598"']) as c$$,
    $$values ('410'::jsonb, null::timestamptz), ('596', null), ('597', null), ('598', null),
             ('"598"', null)$$,
    'codes 410, 596, 597, 598 (number or string) are final at once'
);

-- _final_error: the error a caller finally sees.
select is(_final_error(t.policy::jsonb, t.attempt, t.error::jsonb), t.final::jsonb, t.description)
from (
    values
    (
        null, 3, '{"message": "boom", "type": "ValueError"}',
        '{"message": "boom", "type": "ValueError", "code": 597, "attempts": 3}',
        'attempts used up: 597 with the attempt count, message and type kept'
    ),
    (
        '{"non_retryable_errors": ["ValueError"]}', 1, '{"type": "ValueError"}',
        '{"type": "ValueError", "code": 598, "attempts": 1}',
        'non-retryable before the attempts ran out: 598 (fatal)'
    ),
    (
        null, 1, '{"code": 598, "message": "fatal"}',
        '{"code": 598, "message": "fatal", "attempts": 1}', 'a fatal error keeps 598'
    ),
    (
        null, 3, '{"code": "596"}', '{"code": 596, "attempts": 3}',
        'a final code is kept (as a number) even when the attempts ran out'
    ),
    (
        '{"maximum_attempts": 5}', 2, '{"code": 410}', '{"code": 410, "attempts": 2}',
        'an interruption keeps 410'
    ),
    (
        '{"maximum_attempts": 5}', 5, '{"code": 500}', '{"code": 597, "attempts": 5}',
        'an ordinary code becomes 597 when the attempts ran out'
    )
) as t (policy, attempt, error, final, description);

select * from finish();

rollback;
