# Fresh machine → working install → demo or tests. Override TORCH for a GPU box, e.g.
#   make test TORCH="torch==2.13.0"          (the CPU wheel this project is developed with)
# or install the torch build you want into .venv first: padrec's range (torch>=2.4) keeps it.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN      = $(VENV)/bin
DATA    ?= Instruments
SHARED  ?= ../shared/data

.PHONY: install demo test lint reference-target reference-table

$(BIN)/.padrec-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.padrec-installed

demo: install
	$(BIN)/padrec demo

test: install
	$(BIN)/ruff check modeling_padrec tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check modeling_padrec tests && $(BIN)/ruff format --check modeling_padrec tests

# The CPU reference target for one dataset: train (about 30 min on one core), then evaluate. Kept if present.
REF = runs/ref/$(DATA)
.PHONY: reference-target
reference-target: install $(REF)/eval-500.json $(REF)/eval-all.json

# A time split's test asks for the period after the validation period: its target also learns from the
# validation interactions (then only the test split is evaluated), and a third LoRA stage trains on the split's
# own form, each user's training period -> the validation period's items.
FIT_beauty-timesplit = --fit-splits train+valid --period-steps 300
# $(call train-target,FOLDER,BASE): train FOLDER/target on BASE.
define train-target
	$(BIN)/padrec train-target --data $(SHARED)/$(DATA) --out $(1)/target --base $(2) --seed 0 $(FIT_$(DATA))
endef
$(REF)/target/padrec_target.json:
	$(call train-target,$(REF),qwen2-small)
# A target's evaluations (runs/<recipe>/<dataset>/): its first 500 test users, and all of them through a
# whole-split job (lists-test.jsonl), which an interrupted make resumes where it stopped.
runs/%/eval-500.json: runs/%/target/padrec_target.json
	$(BIN)/padrec evaluate --target runs/$*/target --data $(SHARED)/$(notdir $*) --users 500 --json --out $@
runs/%/eval-all.json: runs/%/target/padrec_target.json
	$(BIN)/padrec recommend --all --target runs/$*/target --data $(SHARED)/$(notdir $*) --out runs/$*/lists-test.jsonl
	$(BIN)/padrec evaluate --lists runs/$*/lists-test.jsonl --data $(SHARED)/$(notdir $*) --json --out $@

# The study's deeper target (its target-size factor): qwen2-small's width, 8 layers (about twice its training
# time). Its evaluations are published beside the study's results, in a folder named by the training's weights
# digest: a retraining need not reproduce the training the study's deep groups benched (whose first-500
# evaluation is results/study/targets/$(DATA)-deep/).
DEEP = runs/deep/$(DATA)
.PHONY: deep-target
deep-target: install $(DEEP)/eval-500.json $(DEEP)/eval-all.json
	dest=results/study/targets/$(DATA)-deep-$$($(BIN)/python -c \
		"import json; print(json.load(open('$(DEEP)/eval-500.json'))['target_weights'])") \
		&& mkdir -p $$dest && cp $(DEEP)/eval-500.json $(DEEP)/eval-all.json $$dest/
$(DEEP)/target/padrec_target.json:
	$(call train-target,$(DEEP),qwen2-deep)

# Rewrite the README's reference table from runs/ref/*/eval-*.json, and publish those reports in results/*/target/.
reference-table: install
	$(BIN)/python scripts/reference_table.py README.md runs/ref results

# The four-way draft ablation for one dataset with its reference target: same recipe, budget and seed, one flag
# apart. An existing draft folder is kept (delete it to retrain).
DRAFT_STEPS ?= 1000
DRAFT_USERS ?= 4000
# Unrolled draft steps in training. An engine round drafts ENGINE_DEPTH choices, stepping the draft over the
# forced tokens between them too (about two tokens per choice on the shipped catalogs), so the draft is trained
# as deep as the rounds it runs.
DRAFT_DEPTH ?= 12
EVAL_USERS  ?= 300
CACHE        = --cache-dir $(REF)/distill-cache
DRAFT_FLAGS_padrec =
DRAFT_FLAGS_item   = --no-step-pos
DRAFT_FLAGS_step   = --no-item-pos
DRAFT_FLAGS_none   = --no-item-pos --no-step-pos
ABLATION = padrec item step none

$(REF)/draft-%/model.safetensors:
	$(BIN)/padrec train-draft --target $(REF)/target --data $(SHARED)/$(DATA) --out $(REF)/draft-$* \
		--depth $(DRAFT_DEPTH) --max-steps $(DRAFT_STEPS) --max-users $(DRAFT_USERS) --seed 0 $(CACHE) $(DRAFT_FLAGS_$*)

.PHONY: reference-drafts
reference-drafts: install $(foreach d,$(ABLATION),$(REF)/draft-$(d)/model.safetensors)

# The vanilla speculative-decoding baseline: a 1-layer Qwen2 assistant distilled on the same lists.
$(REF)/assistant/model.safetensors:
	$(BIN)/padrec train-assistant --target $(REF)/target --data $(SHARED)/$(DATA) --out $(REF)/assistant \
		--layers 1 --depth $(DRAFT_DEPTH) --max-steps $(DRAFT_STEPS) --max-users $(DRAFT_USERS) --seed 0 $(CACHE)

# Every method on the same test users, interleaved: ar (stock generate), ar-jf (the engine, no draft), and the
# PAD-Rec and no-position drafts through stock generate (generate:NAME, BENCH_DEPTH tokens per round) and through
# the engine (NAME, ENGINE_DEPTH choices per round). MERGE=--merge-lora runs every method on the merged model.
# Draft trees (tree:NAME): TREE=auto picks depth and budget per draft by a calibration on validation users;
# TREE=N fixes the budget at N choice nodes (TREE_DEPTH choices on a path at most, TREE_WIDTH children per choice).
BENCH_DEPTH  ?= 15
ENGINE_DEPTH ?= 6
TREE         ?= auto
TREE_WIDTH   ?= 3
TREE_DEPTH   ?= 10
TREE_FLAGS    = --tree $(TREE) --tree-width $(TREE_WIDTH) --tree-depth $(TREE_DEPTH)
BENCH_DRAFTS ?= padrec none
METHODS      ?= ar-jf,generate:pad-rec,pad-rec,tree:pad-rec,generate:no-position,no-position,tree:no-position
BENCH_OUT    ?= $(REF)/bench$(if $(MERGE),-merged)
.PHONY: reference-bench
reference-bench: install $(foreach d,$(BENCH_DRAFTS),$(REF)/draft-$(d)/model.safetensors)
	$(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) --users $(EVAL_USERS) --depth $(BENCH_DEPTH) \
		--engine-depth $(ENGINE_DEPTH) $(TREE_FLAGS) $(foreach d,$(BENCH_DRAFTS),--draft $(REF)/draft-$(d)) \
		--only $(METHODS) $(MERGE) --out $(BENCH_OUT)

# The four drafts and the small-LM assistant through stock generate and the engine (the whole ablation).
# Throughput against the batch size (padrec bench --throughput): batched stock generate, ar-jf, the PAD-Rec draft's
# chain (THROUGHPUT_DEPTH choices per round) and its tree at batch size 1, on THROUGHPUT_USERS test users.
THROUGHPUT_SIZES ?= 1,4,16,64
THROUGHPUT_USERS ?= 128
THROUGHPUT_DEPTH ?= 5
THROUGHPUT_TREE  ?= --tree 6 --tree-width 3 --tree-depth 2
THROUGHPUT_DRAFT ?= $(REF)/draft-padrec
THROUGHPUT_OUT   ?= $(REF)/throughput$(if $(MERGE),-merged)
.PHONY: reference-throughput
reference-throughput: install $(THROUGHPUT_DRAFT)/model.safetensors
	OMP_NUM_THREADS=1 $(BIN)/padrec bench --throughput --target $(REF)/target --data $(SHARED)/$(DATA) \
		--draft $(THROUGHPUT_DRAFT) --engine-depth $(THROUGHPUT_DEPTH) $(THROUGHPUT_TREE) \
		--batch-sizes $(THROUGHPUT_SIZES) --users $(THROUGHPUT_USERS) $(MERGE) --out $(THROUGHPUT_OUT)

# The chain's depth under batching: the throughput benchmark at THROUGHPUT_SWEEP_SIZES for every chain depth in
# THROUGHPUT_DEPTHS (one run per depth, each with its own batched-generate reference); the summary table is
# $(REF)/throughput-depth/sweep.md.
THROUGHPUT_DEPTHS      ?= 2 3 4 6 8 10
THROUGHPUT_SWEEP_SIZES ?= 16,64
THROUGHPUT_SWEEP_DRAFT ?= $(REF)/draft-padrec
.PHONY: throughput-depth-sweep
throughput-depth-sweep: install
	for k in $(THROUGHPUT_DEPTHS); do OMP_NUM_THREADS=1 $(BIN)/padrec bench --throughput --target $(REF)/target \
		--data $(SHARED)/$(DATA) --draft $(THROUGHPUT_SWEEP_DRAFT) --engine-depth $$k \
		--batch-sizes $(THROUGHPUT_SWEEP_SIZES) --users $(THROUGHPUT_USERS) \
		--out $(REF)/throughput-depth/depth-$$k > /dev/null || exit 1; done
	$(BIN)/python scripts/depth_sweep.py $(REF)/throughput-depth

# A whole-split job (padrec recommend --all) with one process and with two (accelerate launch, gloo on the CPU):
# JOB_USERS test users (all of them when empty), the PAD-Rec draft's chain, batch size JOB_BATCH. Timings are the
# jobs' own summary lines, kept in $(REF)/job-*.log; the two outputs must be the same bytes.
JOB_USERS ?=
JOB_BATCH ?= 16
JOB_FLAGS = --target $(REF)/target --data $(SHARED)/$(DATA) --draft $(REF)/draft-padrec --depth $(THROUGHPUT_DEPTH) \
	--all --batch-size $(JOB_BATCH) $(if $(JOB_USERS),--users $(JOB_USERS))
.PHONY: reference-job
reference-job: install $(REF)/draft-padrec/model.safetensors
	rm -f $(REF)/job-1proc.jsonl* $(REF)/job-2proc.jsonl*
	OMP_NUM_THREADS=1 $(BIN)/padrec recommend $(JOB_FLAGS) --out $(REF)/job-1proc.jsonl 2>&1 | tail -1 \
		| tee $(REF)/job-1proc.log
	OMP_NUM_THREADS=1 $(BIN)/accelerate launch --multi_gpu --num_processes 2 -m modeling_padrec.cli recommend \
		$(JOB_FLAGS) --out $(REF)/job-2proc.jsonl 2>&1 | tail -1 | tee $(REF)/job-2proc.log
	cmp $(REF)/job-1proc.jsonl $(REF)/job-2proc.jsonl

.PHONY: reference-ablation-bench
reference-ablation-bench: install reference-drafts $(REF)/assistant/model.safetensors
	$(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) --users $(EVAL_USERS) --depth $(BENCH_DEPTH) \
		--engine-depth $(ENGINE_DEPTH) --assistant $(REF)/assistant $(foreach d,$(ABLATION),--draft $(REF)/draft-$(d)) \
		--out $(REF)/bench-ablation

# The position-signal study (padrec study): every group of drafts its factors need, trained and benched on the
# test users, resumable (a done group is skipped; a killed training resumes from its checkpoint). Each dataset
# needs its reference target first (make reference-target DATA=...). STUDY_GROUPS caps the groups run per call,
# STUDY_ONLY names groups (padrec study plan lists them), STUDY_JOBS drafts train at once (one core each).
# Results: results/study/ (per-group files + report).
STUDY_FACTORS  ?= ablation,budget,depth,sampling,gate,target
STUDY_DATASETS ?= Instruments,Beauty,beauty-timesplit
STUDY_SEEDS    ?= 0,1,2
STUDY_JOBS     ?= 1
.PHONY: study study-plan study-report
study: install
	OMP_NUM_THREADS=1 $(BIN)/padrec study run --factors $(STUDY_FACTORS) --datasets $(STUDY_DATASETS) \
		--seeds $(STUDY_SEEDS) --data-root $(SHARED) $(if $(STUDY_GROUPS),--groups $(STUDY_GROUPS)) \
		$(if $(STUDY_ONLY),--only $(STUDY_ONLY)) --jobs $(STUDY_JOBS)
study-plan: install
	$(BIN)/padrec study plan --factors $(STUDY_FACTORS) --datasets $(STUDY_DATASETS) --seeds $(STUDY_SEEDS) \
		--data-root $(SHARED)
study-report: install
	$(BIN)/padrec study report --readme README.md

# The whole reference run for one dataset: target (once), four drafts, assistant, bench. Then
# `make reference-results` copies the reports into results/ and rewrites the README's benchmark table.
.PHONY: reference-run reference-results
reference-run: reference-target reference-bench

reference-results: install
	$(BIN)/python scripts/bench_table.py README.md runs/ref results
	$(BIN)/python scripts/throughput_table.py README.md runs/ref results

# The Hub repos of a dataset's reference PAD-Rec draft and target, cards filled from its bench report
# (nothing is uploaded; add PUSH=--push to upload).
.PHONY: reference-export
reference-export: install
	$(BIN)/padrec export --draft $(REF)/draft-padrec --target $(REF)/target --data $(SHARED)/$(DATA) --repo-id padrec/$(DATA)-pad-rec \
		--bench $(REF)/bench/report.json --out $(REF)/export $(PUSH)

# Issue-3 evidence: AR and the PAD-Rec / no-position drafts on the same test users, outputs compared.
.PHONY: reference-draft-evidence
reference-draft-evidence: install $(REF)/draft-padrec/model.safetensors $(REF)/draft-none/model.safetensors
	$(BIN)/padrec recommend --target $(REF)/target --data $(SHARED)/$(DATA) --users $(EVAL_USERS) --json \
		--stats $(REF)/stats-ar.json > $(REF)/rec-ar.jsonl
	for d in padrec none; do $(BIN)/padrec recommend --target $(REF)/target --data $(SHARED)/$(DATA) \
		--users $(EVAL_USERS) --json --draft $(REF)/draft-$$d --stats $(REF)/stats-$$d.json > $(REF)/rec-$$d.jsonl; done
	$(BIN)/python scripts/draft_evidence.py $(REF)

# Draft length sweep on one dataset (the BENCH_DRAFTS drafts, same users): one bench per depth, then a
# table of speedup and tau by depth. Stock generate drafts DEPTHS tokens per round; the engine ENGINE_DEPTHS
# choices. Picks BENCH_DEPTH and ENGINE_DEPTH.
DEPTHS        ?= 5 8 10 12 15
ENGINE_DEPTHS ?= 2 3 4 6 8 10
SWEEP_USERS   ?= 60
comma := ,
empty :=
space := $(empty) $(empty)
NAME_padrec = pad-rec
NAME_item   = item-only
NAME_step   = step-only
NAME_none   = no-position
SWEEP_DRAFTS = $(foreach d,$(BENCH_DRAFTS),--draft $(REF)/draft-$(d))
.PHONY: depth-sweep engine-depth-sweep
depth-sweep: install $(foreach d,$(BENCH_DRAFTS),$(REF)/draft-$(d)/model.safetensors)
	for k in $(DEPTHS); do $(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) \
		--users $(SWEEP_USERS) --depth $$k $(SWEEP_DRAFTS) \
		--only $(subst $(space),$(comma),$(foreach d,$(BENCH_DRAFTS),generate:$(NAME_$(d)))) \
		--out $(REF)/sweep/depth-$$k > /dev/null || exit 1; done
	$(BIN)/python scripts/depth_sweep.py $(REF)/sweep

# Tree budget sweep (the BENCH_DRAFTS drafts, same users): the chain and a tree of each budget, one bench per
# budget at TREE_DEPTH; then a table and a plot of tau and speedup against the budget.
TREE_BUDGETS ?= 1 2 4 6 8 12 16 24 32
.PHONY: tree-budget-sweep
tree-budget-sweep: install $(foreach d,$(BENCH_DRAFTS),$(REF)/draft-$(d)/model.safetensors)
	for n in $(TREE_BUDGETS); do $(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) \
		--users $(SWEEP_USERS) --engine-depth $(ENGINE_DEPTH) --tree $$n --tree-width $(TREE_WIDTH) \
		--tree-depth $(TREE_DEPTH) $(SWEEP_DRAFTS) \
		--only $(subst $(space),$(comma),$(foreach d,$(BENCH_DRAFTS),$(NAME_$(d))$(comma)tree:$(NAME_$(d)))) \
		--out $(REF)/tree-sweep/budget-$$n > /dev/null || exit 1; done
	$(BIN)/python scripts/tree_sweep.py $(REF)/tree-sweep

# Tree valuation (the PAD-Rec draft, or TREE_RANK_DRAFT): one bench per rank, each the chain and a tree whose shape
# a calibration picks, its nodes valued by the draft's probabilities, by the calibrated acceptance curve, by its
# curves for first and later picks (sibling), or by whichever the calibration replays as fastest, the plain chain
# included (auto). `make -j2 tree-rank-bench` runs them two at a time, a core each.
TREE_RANKS      ?= draft acceptance sibling auto
TREE_RANK_DRAFT ?= $(REF)/draft-padrec
TREE_RANK_USERS ?= 100
.PHONY: tree-rank-bench
tree-rank-bench: $(foreach r,$(TREE_RANKS),tree-rank-$(r))
tree-rank-%: install
	OMP_NUM_THREADS=1 $(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) --users $(TREE_RANK_USERS) \
		--engine-depth $(ENGINE_DEPTH) --draft pad-rec=$(TREE_RANK_DRAFT) --tree auto --tree-width $(TREE_WIDTH) \
		--tree-depth $(TREE_DEPTH) --tree-rank $* --only pad-rec,tree:pad-rec --out $(REF)/tree-rank/$* > /dev/null

engine-depth-sweep: install $(foreach d,$(BENCH_DRAFTS),$(REF)/draft-$(d)/model.safetensors)
	for k in $(ENGINE_DEPTHS); do $(BIN)/padrec bench --target $(REF)/target --data $(SHARED)/$(DATA) \
		--users $(SWEEP_USERS) --engine-depth $$k $(SWEEP_DRAFTS) \
		--only $(subst $(space),$(comma),$(foreach d,$(BENCH_DRAFTS),$(NAME_$(d)))) \
		--out $(REF)/engine-sweep/depth-$$k > /dev/null || exit 1; done
	$(BIN)/python scripts/depth_sweep.py $(REF)/engine-sweep
