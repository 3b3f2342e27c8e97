-- Human tasks (sql/49_human_tasks.sql): ask_human writes the task with the wait; the inbox
-- lists it by role, status, type and metadata, most urgent first; claim, release, reassign,
-- comment; resolve checks the answer against the form, completes the wait and wakes the
-- thread once; a claim expires a due task (its wait fails with 596) or escalates it; a
-- cancelled workflow's tasks are cancelled; bad input is refused with nothing changed.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(75);

create temp table held (
    job_id text primary key,
    task_id bigint not null,
    token uuid not null
) on commit drop;

-- Starts workflow p_job on queue 'q-<p_job>' and holds its claimed activation.
create function pg_temp.start(p_job text) returns void
language plpgsql as $$
declare
    v_claim claimed_task;
begin
    perform start_workflow('w', '[]', 'q-' || p_job, p_job);
    select * into v_claim from claim_tasks(array['q-' || p_job], 'tester', 1);
    insert into held values (p_job, v_claim.task_id, v_claim.lease_token);
end
$$;

create function pg_temp.ask(p_job text, p_seq integer, p_request jsonb) returns jsonb
language sql as $$
    select ask_human(h.task_id, h.token, p_seq, p_job || '-ask-' || p_seq, p_request)
    from held as h where h.job_id = p_job
$$;

create function pg_temp.suspend(p_job text) returns timestamptz
language sql as $$
    select suspend_task(h.task_id, h.token) from held as h where h.job_id = p_job
$$;

create function pg_temp.task_id(p_job text) returns bigint
language sql as $$ select id from human_tasks where job_id = p_job $$;

-- ------------------------------------------------------------------ asking

select pg_temp.start('a1');
select is(
    pg_temp.ask('a1', 1, $${"role": "approver", "title": "Approve claim A1", "priority": 5,
        "metadata": {"region": "eu", "claim": "A1"}, "due": 3600,
        "form": {"type": "object", "required": ["approved"],
                 "properties": {"approved": {"type": "boolean"},
                                "reason": {"type": "string"}}}}$$) ->> 'status',
    'scheduled',
    'ask_human registers the wait'
);
select results_eq(
    $$select role, title, type, priority, status, due_at, assignee, signal_id, thread, seq
      from human_tasks where job_id = 'a1'$$,
    $$values ('approver', 'Approve claim A1', 'approval', 5, 'open',
              '2020-01-01 01:00:00+00'::timestamptz, null::text, 'a1-ask-1', 'main', 1)$$,
    'and writes the task in the same transaction: defaults filled in, due from the engine clock'
);
select is(
    pg_temp.ask('a1', 1, '{"role": "approver", "title": "Approve claim A1"}') ->> 'status',
    'scheduled', 'asking again at the same position (a replay) returns the wait'
);
select is((select count(*)::integer from human_tasks), 1, 'and writes no second task');

-- Bad requests: refused before anything is recorded.
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "approver", "title": "t", "metadata": [1]}')$$,
    '22023', 'human task metadata must be a JSON object, not [1]', 'metadata must be an object'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "approver", "title": "t", "due": 0}')$$,
    '22023',
    'human task due must be a number of seconds more than 0 (a due time in the future) and at '
    || 'most 1e10, not 0',
    'a due time that is not in the future'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "", "title": "t"}')$$,
    '22023', 'human task role is required', 'a role is required'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "r", "title": "t", "colour": "red"}')$$,
    '22023', 'unknown human task field(s): colour', 'unknown fields are named'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "r", "title": "t", "priority": 1.5}')$$,
    '22023', 'human task priority must be an integer, not 1.5', 'priority is an integer'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "r", "title": "t",
                                    "form": {"type": "string", "minLength": 3}}')$$,
    '22023',
    'form: keyword "minLength" at $ is not supported (supported: type, required, properties, '
    || 'enum, items, additionalProperties, title, description, default)',
    'a form keyword outside the subset is refused, not ignored'
);
select throws_ok(
    $$select pg_temp.ask('a1', 2, '{"role": "r", "title": "t", "escalate_to": "lead"}')$$,
    '22023', 'human task escalate_to needs a due time (escalation happens at due)',
    'escalation needs a due time'
);
select is(
    (select count(*)::integer from steps where job_id = 'a1'), 1,
    'bad requests recorded no step'
);
select is((select count(*)::integer from human_tasks), 1, 'and no task');
select pg_temp.suspend('a1');

-- ------------------------------------------------------------------ the inbox

select pg_temp.start('a2');
select pg_temp.ask('a2', 1, '{"role": "approver", "title": "Approve claim A2", "priority": 5,
                              "metadata": {"region": "us"}, "due": 1800, "type": "review"}');
select pg_temp.suspend('a2');
select pg_temp.start('a3');
select pg_temp.ask('a3', 1, '{"role": "approver", "title": "Approve claim A3"}');
select pg_temp.suspend('a3');
select pg_temp.start('a4');
select pg_temp.ask('a4', 1, '{"role": "approver", "title": "Urgent A4", "priority": 9,
                              "assignee": "carol"}');
select pg_temp.suspend('a4');

select results_eq(
    $$select job_id from list_human_tasks('approver')$$,
    $$values ('a4'), ('a2'), ('a1'), ('a3')$$,
    'most urgent first: priority (higher first), then due (sooner first, none last)'
);
select results_eq(
    $$select job_id from list_human_tasks(metadata => '{"region": "eu"}')$$,
    $$values ('a1')$$, 'filtered by metadata (containment)'
);
select results_eq(
    $$select job_id from list_human_tasks(type => 'review')$$, $$values ('a2')$$,
    'filtered by type'
);
select results_eq(
    $$select job_id from list_human_tasks(assignee => 'carol')$$, $$values ('a4')$$,
    'filtered by assignee'
);
select results_eq(
    $$select job_id from list_human_tasks('approver', max_rows => 2,
                                          after => pg_temp.task_id('a2'))$$,
    $$values ('a1'), ('a3')$$, 'the next page starts after the task given'
);
select is_empty(
    $$select * from list_human_tasks('nobody')$$, 'a role with no task has an empty inbox'
);
select throws_ok(
    $$select * from list_human_tasks(status => 'done')$$, '22023',
    'unknown human task status "done" (open, claimed, resolved, expired, cancelled; null: open '
    || 'and claimed)',
    'an unknown status is refused'
);
select throws_ok(
    $$select * from list_human_tasks(metadata => '"eu"')$$, '22023',
    'the metadata filter must be a JSON object, not "eu"', 'a metadata filter must be an object'
);

-- ------------------------------------------------------------------ claim, release, reassign

select throws_ok(
    format('select claim_human_task(%s, %L)', pg_temp.task_id('a4'), 'ann'), 'HM003',
    format('human task %s is assigned to carol; ann cannot claim it', pg_temp.task_id('a4')),
    'a task assigned to someone else cannot be claimed'
);
select is(
    (select job_id from claim_next_human_task('approver', 'ann')), 'a2',
    'claim_next takes the most urgent open task the person may take'
);
select is(
    (select job_id from claim_next_human_task('approver', 'carol')), 'a4',
    'and one assigned to the caller'
);
select is(
    (select (claim_human_task(pg_temp.task_id('a2'), 'ann')).status), 'claimed',
    'claiming one''s own task again changes nothing'
);
select throws_ok(
    format('select claim_human_task(%s, %L)', pg_temp.task_id('a2'), 'bob'), 'HM003',
    format('human task %s is claimed by ann; bob cannot claim it', pg_temp.task_id('a2')),
    'a task claimed by someone else cannot be claimed'
);
select throws_ok(
    format('select release_human_task(%s, %L)', pg_temp.task_id('a2'), 'bob'), 'HM003',
    format('human task %s is claimed by ann; bob cannot release it', pg_temp.task_id('a2')),
    'nor released by them'
);
select is(
    (select (release_human_task(pg_temp.task_id('a2'), 'ann')).status), 'open',
    'the claimer releases it: open again'
);
select throws_ok(
    format('select release_human_task(%s, %L)', pg_temp.task_id('a2'), 'ann'), 'HM003',
    format('human task %s is open; only a claimed task can be released', pg_temp.task_id('a2')),
    'an open task cannot be released'
);
select results_eq(
    format(
        'select role, assignee, status from reassign_human_task(%s, %L, %L, %L)',
        pg_temp.task_id('a4'), 'carol', 'dave', 'approver-lead'
    ),
    $$values ('approver-lead', 'dave', 'open')$$,
    'reassign: another person and role, the claim ended'
);
select throws_ok(
    'select claim_human_task(999999, ''ann'')', 'HM005', 'human task 999999 not found',
    'an unknown task id'
);
select throws_ok(
    format('select claim_human_task(%s, %L)', pg_temp.task_id('a1'), ''), '22023',
    'who is required', 'who is required'
);
select is(
    (
        select jsonb_path_query_array(events, '$[*].event')
        from comment_human_task(pg_temp.task_id('a1'), 'ann', 'checking the invoice')
    ),
    '["created", "comment"]', 'a comment is appended to the events'
);
select is(
    (select events -> -1 ->> 'text' from human_tasks where job_id = 'a1'),
    'checking the invoice', 'with its text'
);

-- ------------------------------------------------------------------ resolve

select claim_human_task(pg_temp.task_id('a1'), 'ann');
select throws_ok(
    format(
        'select resolve_human_task(%s, %L, %L)', pg_temp.task_id('a1'), 'bob',
        '{"approved": true}'
    ),
    'HM003',
    format('human task %s is claimed by ann; bob cannot resolve it', pg_temp.task_id('a1')),
    'a task claimed by someone else cannot be resolved'
);
select throws_ok(
    format(
        'select resolve_human_task(%s, %L, %L)', pg_temp.task_id('a1'), 'ann',
        '{"approved": "yes"}'
    ),
    '22023',
    format(
        'the answer to human task %s does not match its form: $.approved must be boolean, '
        || 'not string', pg_temp.task_id('a1')
    ),
    'an answer that does not match the form'
);
select throws_ok(
    format(
        'select resolve_human_task(%s, %L, %L)', pg_temp.task_id('a1'), 'ann',
        '{"reason": "ok"}'
    ),
    '22023',
    format(
        'the answer to human task %s does not match its form: $ is missing the required '
        || 'field "approved"', pg_temp.task_id('a1')
    ),
    'a required field missing'
);
select results_eq(
    $$select h.status, s.status from human_tasks as h
      join steps as s on s.job_id = h.job_id and s.seq = h.seq where h.job_id = 'a1'$$,
    $$values ('claimed', 'scheduled')$$,
    'refused answers changed nothing: the workflow still waits'
);
select results_eq(
    format(
        'select status, resolved_by, answer from resolve_human_task(%s, %L, %L)',
        pg_temp.task_id('a1'), 'ann', '{"approved": true}'
    ),
    $$values ('resolved', 'ann', '{"approved": true}'::jsonb)$$,
    'the claimer resolves it'
);
select results_eq(
    $$select status, output from steps where job_id = 'a1' and seq = 1$$,
    $$values ('completed', '{"approved": true}'::jsonb)$$,
    'in the same transaction the wait completes with the answer'
);
select is(
    (select state from tasks where job_id = 'a1' and kind = 'workflow'), 'ready',
    'and the thread is woken'
);
select throws_ok(
    format(
        'select resolve_human_task(%s, %L, %L)', pg_temp.task_id('a1'), 'ann',
        '{"approved": false}'
    ),
    'HM003', format('human task %s is resolved; it cannot become resolved', pg_temp.task_id('a1')),
    'a second resolve is refused'
);
select is(
    (select output from steps where job_id = 'a1' and seq = 1), '{"approved": true}',
    'and changes nothing'
);
select is(
    (select (resolve_human_task(pg_temp.task_id('a3'), 'bob', '"any answer"')).status),
    'resolved', 'an open task without a form takes any answer, unclaimed'
);

-- ------------------------------------------------------------------ SLA: expiry, escalation

select pg_temp.start('s1');
select pg_temp.ask('s1', 1, '{"role": "approver", "title": "Expires", "due": 60}');
select pg_temp.suspend('s1');
select pg_temp.start('s2');
select pg_temp.ask('s2', 1, '{"role": "approver", "title": "Escalates", "due": 60,
                              "escalate_to": "lead", "escalate_due": 120}');
select pg_temp.suspend('s2');
select is(
    next_due(array['q-s1']), '2020-01-01 00:01:00+00'::timestamptz,
    'next_due wakes an idle worker at the first due time'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:59+00';
select is_empty($$select * from claim_tasks(array['none'], 'w', 1)$$, 'a claim before due');
select is(
    (select string_agg(status, ',' order by job_id) from human_tasks where job_id like 's%'),
    'open,open', 'fires nothing'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select is_empty($$select * from claim_tasks(array['none'], 'w', 1)$$, 'a claim at due');
select results_eq(
    $$select status, resolved_by from human_tasks where job_id = 's1'$$,
    $$values ('expired', 'engine')$$, 'expires the task whose SLA passed'
);
select results_eq(
    $$select status, error ->> 'type', (error ->> 'code')::integer, error ->> 'timeout'
      from steps where job_id = 's1' and seq = 1$$,
    $$values ('failed', 'TimeoutFailure', 596, 'due')$$,
    'its wait fails with 596 like a wait_for timeout'
);
select is(
    (select state from tasks where job_id = 's1' and kind = 'workflow'), 'ready',
    'and its thread is woken'
);
select results_eq(
    $$select role, status, due_at, escalate_to from human_tasks where job_id = 's2'$$,
    $$values ('lead', 'open', '2020-01-01 00:03:00+00'::timestamptz, null::text)$$,
    'the escalating task is open again for its escalation role, due escalate_due later'
);
select is(
    (select status from steps where job_id = 's2' and seq = 1), 'scheduled',
    'and its workflow still waits'
);
select throws_ok(
    format('select resolve_human_task(%s, %L, %L)', pg_temp.task_id('s1'), 'ann', 'true'),
    'HM003', format('human task %s is expired; it cannot become resolved', pg_temp.task_id('s1')),
    'an expired task cannot be resolved'
);
set local "hotmesh.fake_now" = '2020-01-01 00:03:00+00';
select is_empty($$select * from claim_tasks(array['none'], 'w', 1)$$, 'at the new due');
select is(
    (select status from human_tasks where job_id = 's2'), 'expired',
    'the escalated task expires'
);
select is(
    (select jsonb_path_query_array(events, '$[*].event') from human_tasks where job_id = 's2'),
    '["created", "escalated", "expired"]', 'its events tell the story'
);

-- ------------------------------------------------------------------ cancellation

select pg_temp.start('c1');
select pg_temp.ask('c1', 1, '{"role": "approver", "title": "Cancelled"}');
select pg_temp.suspend('c1');
select claim_human_task(pg_temp.task_id('c1'), 'ann');
select cancel_workflow('c1');
select is(
    (select status from human_tasks where job_id = 'c1'), 'cancelled',
    'cancelling the workflow cancels its tasks, claimed ones too'
);
select throws_ok(
    format('select resolve_human_task(%s, %L, %L)', pg_temp.task_id('c1'), 'ann', 'true'),
    'HM003', format(
        'human task %s is cancelled; it cannot become resolved',
        pg_temp.task_id('c1')
    ),
    'a cancelled task cannot be resolved'
);

-- ------------------------------------------------------------------ a plain signal answers

-- signal() to the signal id a task waits on: delivered (a signal is never refused) and the
-- task resolved in the same transaction, by nobody known, with the payload as its answer.
select pg_temp.start('g1');
select pg_temp.ask('g1', 1, '{"role": "approver", "title": "Signalled",
                              "form": {"type": "object"}}');
select pg_temp.suspend('g1');
select claim_human_task(pg_temp.task_id('g1'), 'ann');
select is(
    signal('g1-ask-1', '"from a legacy system"') ->> 'status', 'delivered',
    'a plain signal to the signal id of a claimed task is delivered'
);
select results_eq(
    $$select h.status, h.resolved_by, h.answer, s.status, s.output
      from human_tasks as h
      inner join steps as s on s.job_id = h.job_id and s.seq = h.seq where h.job_id = 'g1'$$,
    $$values ('resolved', null::text, '"from a legacy system"'::jsonb, 'completed',
              '"from a legacy system"'::jsonb)$$,
    'and closes the task: resolved, by nobody known, the payload its answer (form not checked)'
);
select is(
    (select (events -> -1) - 'at'::text from human_tasks where job_id = 'g1'),
    '{"who": null, "event": "resolved", "signal_id": "g1-ask-1"}',
    'its event names the signal'
);
select throws_ok(
    format('select resolve_human_task(%s, %L, %L)', pg_temp.task_id('g1'), 'ann', '{}'),
    'HM003', format('human task %s is resolved; it cannot become resolved', pg_temp.task_id('g1')),
    'a person cannot answer it afterwards'
);

-- Another workflow's send: the sender is known.
select pg_temp.start('g2');
select pg_temp.ask('g2', 1, '{"role": "approver", "title": "Sent to"}');
select pg_temp.suspend('g2');
select pg_temp.start('g3');
select is(
    (
        select send_signal(h.task_id, h.token, 1, 'g2-ask-1', '{"ok": true}', 'g2') ->> 'status'
        from held as h where h.job_id = 'g3'
    ),
    'completed', 'a workflow sends the signal'
);
select results_eq(
    $$select status, resolved_by, answer from human_tasks where job_id = 'g2'$$,
    $$values ('resolved', 'g3', '{"ok": true}'::jsonb)$$,
    'the task is resolved by the sending workflow'
);

-- ------------------------------------------------------------------ roles

select results_eq(
    $$select role from human_roles order by role$$,
    $$values ('approver'), ('lead')$$,
    'a role is known once a task was asked of it (its role or escalate_to)'
);
select is_empty(
    $$select * from claim_next_human_task('lead', 'ann')$$,
    'claim_next of a known role with no open task: no row'
);
select throws_ok(
    $$select * from claim_next_human_task('aprover', 'ann')$$, '22023',
    'unknown human task role "aprover": no task was ever asked of it (known roles: approver, '
    || 'lead)',
    'claim_next of a role no task was asked of is refused, naming the known ones'
);
select is(
    (select job_id from claim_next_human_task('approver-lead', 'dave')), 'a4',
    'a role a live task was reassigned to is known'
);

-- ------------------------------------------------------------------ the form subset

select is(
    _form_error('{"enum": ["yes", "no"]}', '"maybe"'),
    '$ must be one of ["yes", "no"], not "maybe"', 'enum'
);
select is(_form_error('{"type": "integer"}', '3'), null, 'an integer');
select is(
    _form_error('{"type": "integer"}', '3.5'), '$ must be integer, not number',
    'a number with a fraction is not an integer'
);
select is(
    _form_error('{"type": "array", "items": {"type": "string"}}', '["a", 2]'),
    '$[1] must be string, not number', 'items'
);
select is(
    _form_error(
        '{"type": "object", "additionalProperties": false, "properties": {"a": {}}}',
        '{"a": 1, "b": 2}'
    ),
    '$.b is not a field of the form', 'additionalProperties false'
);
select is(
    _form_error(
        '{"properties": {"who": {"type": "object", "required": ["name"]}}}', '{"who": {}}'
    ),
    '$.who is missing the required field "name"', 'nested objects'
);

select * from finish();
rollback;
