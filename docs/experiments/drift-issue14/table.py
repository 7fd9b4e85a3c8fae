import json, sys
doc = json.load(open(sys.argv[1]))
m = doc["mean"]
def cell(r, k, fmt="{:.3f}"):
    v = r.get(k); return "–" if v is None else fmt.format(v)
print("| view (users, generator) | F1 mean (min–max) | precision | recall | median delay | alarms / 1k unspliced | kind accuracy | alarms / 1k at events 0–50 / 50–100 / 100–200 |")
print("|---|---|---|---|---|---|---|---|")
for view in ("seen_a", "seen_b", "unseen_a", "unseen_b"):
    if view not in m: continue
    r = m[view]["ours"]
    print(f"| {view} | {r['f1']:.3f} ({r['f1_min']:.3f}–{r['f1_max']:.3f}) | {cell(r,'precision')} | {cell(r,'recall')} | {cell(r,'median_delay','{:.1f}')} | {cell(r,'alarms_per_1k','{:.2f}')} | {cell(r,'kind_accuracy')} | {cell(r,'alarms_per_1k_0_50','{:.2f}')} / {cell(r,'alarms_per_1k_50_100','{:.2f}')} / {cell(r,'alarms_per_1k_100_200','{:.2f}')} |")
print()
names = {"ours": "**ours** (embedding-shift)", "adwin": "ADWIN on surprise, tuned", "page_hinkley": "PageHinkley on surprise, tuned",
 "kernel_cpd": "KernelCPD rbf on text embeddings, tuned", "kernel_cpd_items": "KernelCPD rbf on the model's item table, tuned",
 "adwin_default": "ADWIN default", "page_hinkley_default": "PageHinkley default", "kernel_cpd_default": "KernelCPD text, pen = log L",
 "kernel_cpd_items_default": "KernelCPD items, pen = log L", "never": "never alarm", "every_7": "alarm every 7 events"}
print("| detector | seen users, generator A: F1 (min–max) | alarms / 1k | **unseen users, generator B**: F1 (min–max) | precision | recall | alarms / 1k |")
print("|---|---|---|---|---|---|---|")
for name, label in names.items():
    a = m["seen_a"].get(name, {}); b = m.get("unseen_b", {}).get(name, {})
    fa = f"{a['f1']:.3f} ({a['f1_min']:.3f}–{a['f1_max']:.3f})" if a else "–"
    fb = f"{b['f1']:.3f} ({b['f1_min']:.3f}–{b['f1_max']:.3f})" if b else "–"
    print(f"| {label} | {fa} | {cell(a,'alarms_per_1k','{:.2f}')} | {fb} | {cell(b,'precision')} | {cell(b,'recall')} | {cell(b,'alarms_per_1k','{:.2f}')} |")
