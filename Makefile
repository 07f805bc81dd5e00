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

# The CPU reference target for one dataset: train (about 40-70 min on 2 cores), then evaluate.
reference-target: install
	$(BIN)/padrec train-target --data $(SHARED)/$(DATA) --out runs/ref/$(DATA)/target --base qwen2-small --seed 0
	$(BIN)/padrec evaluate --target runs/ref/$(DATA)/target --data $(SHARED)/$(DATA) --users 500 --json \
		--out runs/ref/$(DATA)/eval-500.json
	$(BIN)/padrec evaluate --target runs/ref/$(DATA)/target --data $(SHARED)/$(DATA) --json --batch-size 64 \
		--out runs/ref/$(DATA)/eval-all.json

# Rewrite the README's reference table from runs/ref/*/eval-*.json.
reference-table: install
	$(BIN)/python scripts/reference_table.py README.md runs/ref

# Issue-3 evidence on one dataset with its reference target: the PAD-Rec draft and the EAGLE-style baseline
# (both position signals off), same recipe, budget and seed; then AR and both drafts on the same test users.
DRAFT_STEPS ?= 1000
DRAFT_USERS ?= 4000
EVAL_USERS  ?= 300
REF          = runs/ref/$(DATA)
.PHONY: reference-drafts
reference-drafts: install
	$(BIN)/padrec train-draft --target $(REF)/target --data $(SHARED)/$(DATA) --out $(REF)/draft-padrec \
		--depth 5 --max-steps $(DRAFT_STEPS) --max-users $(DRAFT_USERS) --seed 0
	$(BIN)/padrec train-draft --target $(REF)/target --data $(SHARED)/$(DATA) --out $(REF)/draft-none \
		--depth 5 --max-steps $(DRAFT_STEPS) --max-users $(DRAFT_USERS) --seed 0 --no-item-pos --no-step-pos
	$(BIN)/padrec recommend --target $(REF)/target --data $(SHARED)/$(DATA) --users $(EVAL_USERS) --json \
		--stats $(REF)/stats-ar.json > $(REF)/rec-ar.jsonl
	for d in padrec none; do $(BIN)/padrec recommend --target $(REF)/target --data $(SHARED)/$(DATA) \
		--users $(EVAL_USERS) --json --draft $(REF)/draft-$$d --stats $(REF)/stats-$$d.json > $(REF)/rec-$$d.jsonl; done
	$(BIN)/python scripts/draft_evidence.py $(REF)
