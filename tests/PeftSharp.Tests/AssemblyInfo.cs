// Tests run one at a time: many seed torch's global generator (manual_seed) and then draw from it, and
// libtorch already uses both cores inside each op, so parallel test classes only made those draws racy.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
