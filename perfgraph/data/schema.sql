-- perfgraph dataset, schema version 1. One row per fact; every candidate is committed as soon as it ends.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS machines (
    machine_id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL                      -- JSON: cpu_model, logical_cores, target, halide_version, ...
);

CREATE TABLE IF NOT EXISTS pipelines (
    pipeline_id INTEGER PRIMARY KEY,
    uri TEXT NOT NULL UNIQUE,               -- workload URI: zoo:..., random:SEED, file:PATH:FUNCTION
    identity TEXT NOT NULL UNIQUE,          -- sha256 of the URI and Halide's own description of the algorithm
    family TEXT NOT NULL,
    num_stages INTEGER NOT NULL,
    graph TEXT NOT NULL,                    -- JSON StageGraph: stage names, edges, edge features, Jacobians
    buffers TEXT NOT NULL,                  -- JSON: input and output buffer specs (estimates)
    algorithm_hash TEXT NOT NULL,           -- sha256 of the pipeline-feature columns (schedule-independent)
    shard TEXT                              -- the shard this row was exported to (NULL: not yet)
);

CREATE TABLE IF NOT EXISTS schedules (
    schedule_id INTEGER PRIMARY KEY,
    pipeline_id INTEGER NOT NULL REFERENCES pipelines(pipeline_id),
    candidate_index INTEGER NOT NULL,
    config TEXT NOT NULL,                   -- JSON: every autoscheduler parameter used
    features_hash TEXT NOT NULL,
    featurization BLOB NOT NULL,            -- zlib of Halide's float32 featurization, 326 per stage
    schedule_source TEXT NOT NULL,
    autoschedule_s REAL NOT NULL,
    duplicate_of INTEGER REFERENCES schedules(schedule_id),  -- same features as an already measured one
    shard TEXT,
    UNIQUE (pipeline_id, candidate_index)
);

CREATE TABLE IF NOT EXISTS measurements (
    measurement_id INTEGER PRIMARY KEY,
    schedule_id INTEGER NOT NULL REFERENCES schedules(schedule_id),
    machine_id INTEGER NOT NULL REFERENCES machines(machine_id),
    runtime_ms REAL NOT NULL,               -- minimum over repeats
    median_ms REAL NOT NULL,
    cv REAL NOT NULL,                       -- coefficient of variation of the repeats
    repeats_ms TEXT NOT NULL,               -- JSON list of every repeat
    threads INTEGER NOT NULL,
    compile_s REAL NOT NULL,
    is_repeat INTEGER NOT NULL DEFAULT 0,   -- 1: an independent re-measurement (for the noise floor)
    measured_at TEXT NOT NULL,
    shard TEXT,
    protocol TEXT NOT NULL DEFAULT 'window-v1',  -- timing protocol (perfgraph.measure.timing)
    conditions TEXT                         -- JSON: slow bursts rejected, calibration, steal time
);

CREATE TABLE IF NOT EXISTS failures (
    failure_id INTEGER PRIMARY KEY,
    pipeline_uri TEXT NOT NULL,
    candidate_index INTEGER NOT NULL,       -- -1: the pipeline itself failed to build or analyse
    config TEXT,
    kind TEXT NOT NULL,                     -- autoschedule_error, compile_error, crash, timeout, wrong_output, ...
    phase TEXT NOT NULL,
    message TEXT NOT NULL,
    machine_id INTEGER REFERENCES machines(machine_id),
    failed_at TEXT NOT NULL,
    shard TEXT,
    UNIQUE (pipeline_uri, candidate_index)
);

CREATE INDEX IF NOT EXISTS measurements_by_schedule ON measurements(schedule_id);
CREATE INDEX IF NOT EXISTS schedules_by_hash ON schedules(pipeline_id, features_hash);
