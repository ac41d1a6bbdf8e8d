-- The wattscale store schema version 2 (sqlite), as created by wattscale 0.1.0 before schema 3:
-- the starting point of the 2 -> 3 migration test.
CREATE TABLE experiments (
	name VARCHAR NOT NULL, 
	spec_json TEXT NOT NULL, 
	spec_hash VARCHAR(64) NOT NULL, 
	order_design VARCHAR(32) NOT NULL, 
	order_seed BIGINT NOT NULL, 
	source_path TEXT, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_experiments PRIMARY KEY (name)
);

CREATE TABLE runs (
	run_id VARCHAR(32) NOT NULL, 
	experiment VARCHAR, 
	name VARCHAR, 
	preset VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	config_json TEXT NOT NULL, 
	config_hash VARCHAR(64) NOT NULL, 
	seed BIGINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	wall_seconds DOUBLE NOT NULL, 
	tokens_budget BIGINT NOT NULL, 
	data_tokens BIGINT, 
	epochs DOUBLE, 
	repeat INTEGER, 
	tokens_seen BIGINT NOT NULL, 
	steps INTEGER NOT NULL, 
	params_total BIGINT, 
	params_embedding BIGINT, 
	params_non_embedding BIGINT, 
	flops_per_token DOUBLE, 
	device VARCHAR(64), 
	device_info_json TEXT, 
	git_revision VARCHAR, 
	wattscale_version VARCHAR(32), 
	torch_version VARCHAR(64), 
	final_val_loss DOUBLE, 
	final_val_ppl DOUBLE, 
	energy_j DOUBLE, 
	energy_source VARCHAR(16), 
	run_dir TEXT, 
	message TEXT, 
	resume_count INTEGER NOT NULL, 
	CONSTRAINT pk_runs PRIMARY KEY (run_id), 
	CONSTRAINT ck_runs_status CHECK (status IN ('pending', 'running', 'finished', 'diverged', 'failed', 'interrupted')), 
	CONSTRAINT ck_runs_energy_source CHECK (energy_source IS NULL OR energy_source IN ('counter', 'integrated', 'estimated')), 
	CONSTRAINT ck_runs_energy_has_source CHECK (energy_j IS NULL OR energy_source IS NOT NULL)
);

CREATE INDEX ix_runs_created_at ON runs (created_at);

CREATE INDEX ix_runs_experiment ON runs (experiment);

CREATE TABLE schema_version (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	wattscale_version VARCHAR(32), 
	CONSTRAINT pk_schema_version PRIMARY KEY (id)
);

CREATE TABLE energy_measurements (
	id INTEGER NOT NULL, 
	run_id VARCHAR(32) NOT NULL, 
	device VARCHAR(64) NOT NULL, 
	scope VARCHAR(16) NOT NULL, 
	start_tokens BIGINT, 
	end_tokens BIGINT, 
	start_seconds DOUBLE NOT NULL, 
	end_seconds DOUBLE NOT NULL, 
	energy_j DOUBLE NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	complete BOOLEAN NOT NULL, 
	details_json TEXT, 
	CONSTRAINT pk_energy_measurements PRIMARY KEY (id), 
	CONSTRAINT ck_energy_measurements_scope CHECK (scope IN ('run', 'interval', 'idle')), 
	CONSTRAINT ck_energy_measurements_source CHECK (source IN ('counter', 'integrated', 'estimated')), 
	CONSTRAINT fk_energy_measurements_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE INDEX ix_energy_measurements_run_id ON energy_measurements (run_id);

CREATE TABLE evaluations (
	id INTEGER NOT NULL, 
	run_id VARCHAR(32) NOT NULL, 
	step INTEGER NOT NULL, 
	tokens_seen BIGINT NOT NULL, 
	val_loss DOUBLE, 
	val_ppl DOUBLE, 
	wall_seconds DOUBLE, 
	CONSTRAINT pk_evaluations PRIMARY KEY (id), 
	CONSTRAINT uq_evaluations_run_id_tokens_seen UNIQUE (run_id, tokens_seen), 
	CONSTRAINT fk_evaluations_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE TABLE experiment_runs (
	experiment VARCHAR NOT NULL, 
	position INTEGER NOT NULL, 
	run_id VARCHAR(32) NOT NULL, 
	block INTEGER NOT NULL, 
	repetition INTEGER NOT NULL, 
	condition VARCHAR NOT NULL, 
	condition_json TEXT NOT NULL, 
	CONSTRAINT pk_experiment_runs PRIMARY KEY (experiment, position), 
	CONSTRAINT uq_experiment_runs_experiment_run_id UNIQUE (experiment, run_id), 
	CONSTRAINT fk_experiment_runs_experiment_experiments FOREIGN KEY(experiment) REFERENCES experiments (name) ON DELETE CASCADE
);

CREATE INDEX ix_experiment_runs_run_id ON experiment_runs (run_id);

CREATE TABLE power_samples (
	id INTEGER NOT NULL, 
	run_id VARCHAR(32) NOT NULL, 
	device VARCHAR(64) NOT NULL, 
	t_seconds DOUBLE NOT NULL, 
	power_w DOUBLE NOT NULL, 
	energy_j DOUBLE, 
	CONSTRAINT pk_power_samples PRIMARY KEY (id), 
	CONSTRAINT fk_power_samples_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE INDEX ix_power_samples_run_id_t_seconds ON power_samples (run_id, t_seconds);

CREATE TABLE train_steps (
	run_id VARCHAR(32) NOT NULL, 
	step INTEGER NOT NULL, 
	tokens_seen BIGINT NOT NULL, 
	loss DOUBLE, 
	lr DOUBLE, 
	grad_norm DOUBLE, 
	step_seconds DOUBLE, 
	CONSTRAINT pk_train_steps PRIMARY KEY (run_id, step), 
	CONSTRAINT fk_train_steps_run_id_runs FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

INSERT INTO schema_version (id, version, wattscale_version) VALUES (1, 2, '0.1.0');
