# Validation loss against the Muon lr, one curve per width, from the CSV of
# `fashion_mnist --width-transfer`; the crosses are muon::scale_to_width's lr
# transferred from the smallest width.
# Usage: gnuplot -e "csv='DIR/width_transfer_match_rms_adamw.csv'; png='DIR/wt.png'; widths='128 256 512 1024'" plot_width_transfer.gp
if (!exists("csv")) csv = "fashion_mnist_out/width_transfer_match_rms_adamw.csv"
if (!exists("png")) png = "fashion_mnist_out/width_transfer.png"
if (!exists("widths")) widths = "128 256 512 1024"

set terminal pngcairo size 900,600 font ",11" noenhanced
set format x "%g"
set mxtics 10
set output png
set datafile separator ","
set logscale x 10
set grid
set key top left
set xlabel "Muon lr (before the shape adjustment)"
set ylabel "validation loss"
set title "Muon lr vs width (lines: grid; crosses: lr from muon::scale_to_width)"
w(i) = word(widths, i) + 0
plot for [i=1:words(widths)] csv using 2:((int($1) == w(i) && strcol(5) eq "grid") ? $3 : 1/0) \
       skip 1 with linespoints lw 2 lc i title "width ".word(widths, i), \
     for [i=1:words(widths)] csv using 2:((int($1) == w(i) && strcol(5) eq "scaled") ? $3 : 1/0) \
       skip 1 with points pt 2 ps 3 lw 3 lc i notitle
