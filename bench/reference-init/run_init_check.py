# Driver (not part of the reference). Run from /tmp/mdeq-ref:
#   OMP_NUM_THREADS=1 python run_init_check.py --cfg experiments/cifar/cls_mdeq_TINY.yaml
import os, sys, argparse, json
sys.path.insert(0, os.path.abspath('_shims'))   # scipy stub
sys.path.insert(0, os.path.abspath('lib'))      # what tools/_init_paths.py does
import torch
torch.set_num_threads(1)
import numpy as np

from config.default import _C as config, update_config
import models.mdeq as mdeq_mod           # imports mdeq_core -> deq2d, modules.deq2d, ...
import modules.deq2d as mdeq2d            # the DEQFunc2d actually used by MDEQWrapper

p = argparse.ArgumentParser()
p.add_argument('--cfg', required=True)
p.add_argument('--budgets', default='cfg,30,100')
p.add_argument('--mode', default='eval', choices=['eval', 'train'])
p.add_argument('--per_sample', action='store_true')
p.add_argument('--gain', action='store_true')
a = p.parse_args()
class Args: pass
args = Args(); args.cfg = a.cfg; args.modelDir = ''; args.logDir = ''; args.dataDir = ''
args.testModel = ''; args.percent = 1.0; args.opts = []
update_config(config, args)

M = config.MODEL
print('CONFIG: NUM_BRANCHES=%s NUM_CHANNELS=%s NUM_BLOCKS=%s NUM_GROUPS=%s DROPOUT=%s WNORM=%s F_THRES=%s B_THRES=%s '
      'PRETRAIN_STEPS=%s NUM_LAYERS=%s EXPANSION_FACTOR=%s DOWNSAMPLE_TIMES=%s HEAD_CHANNELS=%s FINAL_CHANSIZE=%s' % (
      M.EXTRA.FULL_STAGE.NUM_BRANCHES, list(M.EXTRA.FULL_STAGE.NUM_CHANNELS), list(M.EXTRA.FULL_STAGE.NUM_BLOCKS),
      M.NUM_GROUPS, M.DROPOUT, M.WNORM, M.F_THRES, M.B_THRES, config.TRAIN.PRETRAIN_STEPS, M.NUM_LAYERS,
      M.EXPANSION_FACTOR, M.DOWNSAMPLE_TIMES, list(M.EXTRA.FULL_STAGE.HEAD_CHANNELS), M.EXTRA.FULL_STAGE.FINAL_CHANSIZE))

torch.manual_seed(0); np.random.seed(0)
model = mdeq_mod.get_cls_net(config)      # constructor + init_weights(), as cls_train.py does (minus .cuda())
print('stage0 is None:', model.stage0 is None)
torch.manual_seed(0)
x = torch.randn(4, 3, 32, 32)

# record broyden's result_info without editing the reference
_orig = mdeq2d.broyden
REC = []
def rec_broyden(g, x0, threshold, eps, ls=False, name="unknown"):
    r = _orig(g, x0, threshold, eps, ls=ls, name=name)
    REC.append(r); return r
mdeq2d.broyden = rec_broyden

if a.mode == 'eval':
    model.eval()
else:
    model.train()
train_step = config.TRAIN.PRETRAIN_STEPS + 1   # > PRETRAIN_STEPS => Broyden path (validate() uses -1, same path)

def per_sample_stats(r):
    z = r['result']; gz = None
    return z

def run(budget, xin, label):
    REC.clear()
    torch.manual_seed(1)   # dropout mask (train mode only)
    with torch.no_grad():
        out = model(xin, train_step=train_step, f_thres=budget)
    r = REC[0]
    z = r['result']                     # lowest_xest  [B, n, 1]
    # recompute g at returned point with the same func/injection (reference's own DEQFunc2d.g)
    xd = model.downsample(xin)
    xl = [model.stage0(xd) if model.stage0 else xd]
    for i in range(1, model.num_branches):
        bsz, _, H, W = xl[-1].shape
        xl.append(torch.zeros(bsz, model.num_channels[i], H//2, W//2))
    cut = [(model.num_channels[0], xl[0].shape[2], xl[0].shape[3])]
    for i in range(1, model.num_branches):
        cut.append((model.num_channels[i], xl[i].shape[2], xl[i].shape[3]))
    with torch.no_grad():
        g = mdeq2d.DEQFunc2d.g(model.fullstage, z, xl, cut, budget, train_step)
    fz = z + g
    abs_i = g.flatten(1).norm(dim=1)
    rel_f = abs_i / fz.flatten(1).norm(dim=1)
    res = dict(label=label, budget=budget, nstep=r['nstep'], lowest_step=r['lowest_step'], eps=r['eps'],
               diff=r['diff'], diff_detail=[float(v) for v in r['diff_detail'].flatten()],
               min_new_trace=min(r['new_trace'][1:]) if len(r['new_trace']) > 1 else None,
               init_objective=r['trace'][0], prot_break=r['prot_break'],
               per_sample_abs=[float(v) for v in abs_i], per_sample_rel_f=[float(v) for v in rel_f],
               batch_rel=float(g.norm() / fz.norm()), logits_finite=bool(torch.isfinite(out).all()),
               trace=[round(t, 5) for t in r['trace']])
    print(json.dumps(res))
    return res, xl, cut, z

budgets = [M.F_THRES if b == 'cfg' else int(b) for b in a.budgets.split(',')]
last = None
for b in budgets:
    last = run(b, x, 'batch4_%s' % a.mode)
if a.per_sample:
    for b in budgets:
        for i in range(4):
            run(b, x[i:i+1], 'single%d_%s' % (i, a.mode))

if a.gain:
    res, xl, cut, zstar = last
    torch.manual_seed(123)
    def f(z):
        return mdeq2d.DEQFunc2d.list2vec(model.fullstage(mdeq2d.DEQFunc2d.vec2list(z, cut), xl))
    eps_ = 1e-3
    # model._forward already called fullstage._reset (wnorm weights + dropout mask); eval: dropout identity
    with torch.no_grad():
        print('INJECTION per-sample norm (branch0):', [round(float(v), 5) for v in xl[0].flatten(1).norm(dim=1)],
              'per-elem rms:', round(float(xl[0].pow(2).mean().sqrt()), 6))
        zf0 = f(torch.zeros_like(zstar))
        for name, z0 in [('z=0', torch.zeros_like(zstar)), ('z=f(0)', zf0), ('z=broyden_out(budget=%d)' % res['budget'], zstar)]:
            f0 = f(z0); ratios = []
            for k in range(5):
                d = torch.randn_like(z0)
                d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1)
                ratios.append(((f(z0 + eps_ * d) - f0).flatten(1).norm(dim=1) / eps_))
            R = torch.stack(ratios)   # [5, B]
            print('GAIN %s per-sample mean over 5 dirs: %s ; overall mean %.4f ; min %.4f max %.4f' % (
                name, [round(float(v), 4) for v in R.mean(0)], float(R.mean()), float(R.min()), float(R.max())))
