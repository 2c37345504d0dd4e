"""Local embedding views: written into the site's own state folder, never part of a reply."""

from client.embedding_views import fused_representations


def test_views_are_written_at_the_site_and_not_sent(make_job, initial_state):
    job = make_job(round_=3, run_id="r1", **{"embedding-views": True})
    metrics = job.evaluate(initial_state(job))
    png = job.site.state_dir / "views" / "round-003.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the reply carries scalar metrics only: no representation leaves the site
    assert all(isinstance(v, float) for v in metrics.values())


def test_fused_representations_match_the_head_input(make_job, initial_state):
    job = make_job(round_=1, run_id="r1")
    data = job.data()
    model = job.model(initial_state(job), data)
    feats, labels, masks = fused_representations(model, data.test, device=__import__("torch").device("cpu"))
    assert feats.shape[0] == len(data.test) == len(labels) == len(masks)
    assert feats.shape[1] == len(job.scenario.modalities) * job.run.model.hidden_dim
