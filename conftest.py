# The sftbench plugin is registered through the pytest11 entry point of the installed package; this
# file keeps the repository root as pytest's rootdir, so baselines/ and results/ resolve here.
