"""merge vs prune at equal kept units on a trained mlp-10d 4x network (synthetic teacher data, seed 0)."""
import time, torch, widthlab
from widthlab import TrainConfig, create_model, fit, load_data, compress
torch.manual_seed(0)
splits = load_data("synthetic", seed=0, input_dim=10)
model = create_model("mlp", 4.0, input_dim=10, num_classes=2, init="normal", sigma=0.01, seed=0)
t = time.time()
res = fit(model, splits, TrainConfig(lr=0.1, epochs=30))
print("trained in %.0f s; test acc" % (time.time() - t), res.test_acc if hasattr(res, "test_acc") else res)
model.eval()
for k in (16, 32, 64, 128):
    row = [k]
    for method, imp in (("merge", "ablation"), ("prune", "ablation"), ("prune", "magnitude"), ("prune", "random")):
        r = compress(model, splits.train, keep=k, method=method, importance=imp, eval_inputs=splits.test)
        t = r.table.iloc[0]
        row += [f"{method}/{imp}: acc {t.accuracy_after:.3f} agr {t.agreement:.3f}"]
    print(f"keep {k:4d} of 512 (acc before {t.accuracy_before:.3f}):", " | ".join(row[1:]))
r = compress(model, splits.train, max_drop=0.01, eval_inputs=splits.test)
print(r.table.to_string())
