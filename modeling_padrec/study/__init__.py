"""The seeded study of PAD-Rec's position signals (``padrec study``): which drafts to train (:mod:`.plan`), how
they are trained and benched resumably (:mod:`.run`), intervals over seeds and users (:mod:`.stats`), and the
report recomputed from the committed per-group results (:mod:`.report`)."""
