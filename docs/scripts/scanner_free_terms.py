"""Do the scanner-free branch's two generator terms fight? For every training snapshot of a run's GMM-DRIT and
DRIT++: on 16 training batches drawn as training draws them, the gradients on E^c, G (and DRIT++'s E^a) of
  adv2 = bce(D_s2 real/fake head on the scanner-free outputs, "real")  and  cls2 = bce(D_s2 scanner head, all-zero code),
their cosine, their weighted norms (w_adv; w_cls_sf and w_cls), and what D_s2 says of those outputs (P(real), the largest
P(scanner)); the cross-domain branch's adv1 / cls1 (D_s1, toward the target's code) as a control.
(docs/experiments.md, "Do the scanner-free branch's two terms fight?"). Reads a finished quick-profile run (its
training slices and both models' training snapshots); trains nothing and writes nothing into the run. Not run by
`make test`; last run with the package code of 4aec345 (09871b1's models), giving the docs' numbers.

    python docs/scripts/scanner_free_terms.py RUN_DIR OUT_JSON [uniform]

``uniform``: read cls2 toward 1/K for every scanner instead of the all-zero code (the other "no scanner" target).
"""
import json, sys
import numpy as np, torch
from nbutils import config, data, drit, losses, methods

run = config.setup("quick", sys.argv[1], 0)
uniform = len(sys.argv) > 3 and sys.argv[3] == "uniform"
train = data.for_run(run, "train")
p = run.profile
cos = lambda u, v: float(torch.dot(u, v) / (u.norm() * v.norm() + 1e-12))
out = {}
for method in (methods.GMM_DRIT, methods.DRITPP):
    ck = run.checkpoints / method.checkpoint(False)
    model = drit.from_checkpoint(ck)
    cfg = model.cfg
    rows = []
    for step, seconds, m in drit.snapshot_models(ck, model):
        m.train()
        params = list(m.content.parameters()) + list(m.generator.parameters())
        if cfg.variant == "drit++":
            params += list(m.attribute.parameters())
        flat = lambda loss: torch.cat([(g if g is not None else torch.zeros_like(q)).flatten() for g, q in
                                       zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)])
        sampler = drit.PairSampler(train.images, train.labels, p.drit_batch, 1234, "cpu", crop=cfg.image_shape[0],
                                   masks=train.masks, view=m.view_size)
        if cfg.variant == "gmm-drit":
            sampler.attach_codes(m)
        acc = {k: [] for k in ("cos2", "n_adv2", "n_cls2", "cos1", "n_adv1", "n_cls1", "p_real_sf", "p_scanner_sf",
                               "p_real_fake", "p_target_fake", "adv2", "cls2", "p_real_real", "p_scanner_real")}
        torch.manual_seed(0)
        for it in range(16):
            b = sampler(it)
            xa, xb = b["xa"], b["xb"]; n = len(xa); shape = xa.shape[-2:]
            if "za" in b:
                (za_a, c_a), (za_b, c_b) = (b["za"], b["ca"]), (b["zb"], b["cb"])
            else:
                za_a, c_a, _ = m.attributes(b.get("va", xa), b.get("la"), sample=True)
                za_b, c_b, _ = m.attributes(b.get("vb", xb), b.get("lb"), sample=True)
            o = torch.cat([b["oa"], b["ob"]])
            zc = m.encode(torch.cat([xa, xb]), (torch.cat([za_a, za_b]), torch.cat([c_a, c_b])), o, cfg.slices)
            zc = zc + cfg.zc_noise * torch.randn_like(zc)
            zs, c_sf = m.scanner_free_code(2 * n, "cpu")
            sf = m.generator(zc, zs, c_sf, shape, o, cfg.slices)
            fake = m.generator(zc, torch.cat([za_b, za_a]), torch.cat([c_b, c_a]), shape, o, cfg.slices)
            adv2, cls2 = losses.generator(m.ds2, sf, torch.full_like(c_sf, 1.0 / c_sf.shape[1]) if uniform
                                          else torch.zeros_like(c_sf))
            adv1, cls1 = losses.generator(m.ds1, fake, torch.cat([c_b, c_a]))
            ga2, gc2, ga1, gc1 = flat(adv2), flat(cls2), flat(adv1), flat(cls1)
            with torch.no_grad():
                r2, s2 = m.ds2(sf); r1, s1 = m.ds1(fake); rr, sr = m.ds2(torch.cat([xa, xb]))
            acc["p_real_real"].append(float(torch.sigmoid(rr).mean()))
            acc["p_scanner_real"].append(float(torch.sigmoid(sr).max(1).values.mean()))
            acc["cos2"].append(cos(ga2, gc2)); acc["cos1"].append(cos(ga1, gc1))
            acc["n_adv2"].append(cfg.w_adv * float(ga2.norm())); acc["n_cls2"].append(cfg.w_cls_sf * float(gc2.norm()))
            acc["n_adv1"].append(cfg.w_adv * float(ga1.norm())); acc["n_cls1"].append(cfg.w_cls * float(gc1.norm()))
            acc["p_real_sf"].append(float(torch.sigmoid(r2).mean()))
            acc["p_scanner_sf"].append(float(torch.sigmoid(s2).max(1).values.mean()))
            acc["p_real_fake"].append(float(torch.sigmoid(r1).mean()))
            tgt = torch.cat([c_b, c_a]).argmax(1)
            acc["p_target_fake"].append(float(torch.sigmoid(s1).gather(1, tgt[:, None]).mean()))
            acc["adv2"].append(float(adv2.detach())); acc["cls2"].append(float(cls2.detach()))
        row = {"step": step} | {k: float(np.mean(v)) for k, v in acc.items()}
        row["cos2_sd"] = float(np.std(acc["cos2"])); row["cos1_sd"] = float(np.std(acc["cos1"]))
        rows.append(row)
        print(method.name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    out[method.name] = rows
json.dump(out, open(sys.argv[2], "w"), indent=1)
