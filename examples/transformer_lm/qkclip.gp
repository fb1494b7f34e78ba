# QK-Clip phase of the transformer_lm example, from DIR/qkclip.csv and
# DIR/qkclip_evals.csv.
# Usage: gnuplot -e "outdir='DIR'; arms='none clip heads heads-clip'; layers=4; tau=100; lr=0.32" qkclip.gp
# One panel per arm: the largest attention logit of each layer at every step
# (before any clip); a last panel: the validation loss of every arm. Writes
# DIR/qk_clip.png.
if (!exists("outdir")) outdir = "transformer_lm_out"
if (!exists("arms")) arms = "none clip heads heads-clip"
if (!exists("layers")) layers = 4
if (!exists("tau")) tau = 100
if (!exists("lr")) lr = 0

panels = words(arms) + 1
columns = 2
rows = (panels + columns - 1) / columns
set terminal pngcairo size 1300, 60 + 400 * rows font ",10" noenhanced
set output outdir."/qk_clip.png"
set datafile separator ","
set grid
set multiplot layout rows,columns title sprintf("QK-Clip at Muon lr %g (tau %g): largest attention logit per layer, and the loss", lr, tau)

data = outdir."/qkclip.csv"
arm(j) = word(arms, j)
describe(a) = a eq "none" ? "no clip" : (a eq "clip" ? "QK-Clip" : (a eq "heads" ? "per-head orthogonalization of QKV, no clip" : "per-head orthogonalization + QK-Clip"))
finite(v) = (v == v && abs(v) < 1e30) ? v : NaN

stats data using 4 skip 1 nooutput
top = STATS_max * 1.05
do for [j=1:words(arms)] {
  set title "arm '".arm(j)."': ".describe(arm(j))
  set xlabel "step"
  set ylabel "max logit (q.k / sqrt(d_head))"
  set yrange [0:top]
  set key top left
  plot for [l=0:layers-1] data using \
         2:(strcol(1) eq arm(j) && $3 == l ? finite($4) : NaN) skip 1 \
         with lines lw 1.5 lc (l + 1) title sprintf("layer %d", l), \
       tau with lines dt 2 lc rgb "black" title "tau"
}

set title "validation loss of each arm"
set ylabel "validation loss (nats/byte)"
set autoscale y
set yrange [*:4]
set key top right
plot for [j=1:words(arms)] outdir."/qkclip_evals.csv" using \
       2:(strcol(1) eq arm(j) ? finite($4) : NaN) skip 1 \
       with linespoints lw 2 pt 7 ps 0.6 lc j title arm(j)
unset multiplot
