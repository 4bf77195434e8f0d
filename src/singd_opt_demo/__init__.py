"""The training demo behind the ``singd-opt`` command.

Small modules: :mod:`~singd_opt_demo.cli` (the command line),
:mod:`~singd_opt_demo.program` (the program around it) and
:mod:`~singd_opt_demo.interrupt` (how it ends after Ctrl-C);
:mod:`~singd_opt_demo.tasks` (the two tasks, digits and lm, with their
tuned hyper-parameters), :mod:`~singd_opt_demo.training` (optimizers, the training
loop shared by both tasks and its metrics), :mod:`~singd_opt_demo.report` (the table
and the figure), :mod:`~singd_opt_demo.split` (the data as the loop sees it);
for the digits :mod:`~singd_opt_demo.data` (the fixed split of scikit-learn's bundled
8x8 digits) and :mod:`~singd_opt_demo.models` (the CNN); for the language model
:mod:`~singd_opt_demo.lm_data` (the standard library's source, split by position)
and :mod:`~singd_opt_demo.lm_model` (the transformer). Importing this package needs
only ``torch``; the digits loader imports scikit-learn when it is called.
"""
